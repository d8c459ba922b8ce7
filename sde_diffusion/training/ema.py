"""Exponential moving average of a network's parameters, the weights used for sampling and
evaluation (Ho et al. 2020, app. B; Song & Ermon 2020, technique 5)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param after every optimizer step.

    The effective decay min(decay, (1 + n) / (10 + n)) after n updates lets short runs (toy
    sets, tests) average over the steps they have rather than over the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow_params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(self.shadow_params, params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for shadow, param in zip(self.shadow_params, model.parameters()):
            param.copy_(shadow)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` (buffers included) carrying the averaged parameters, in eval mode."""
        averaged = copy.deepcopy(model)
        self.copy_to(averaged)
        return averaged.eval().requires_grad_(False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(shadow)} tensors, the model {len(self.shadow_params)} parameters")
        for mine, theirs in zip(self.shadow_params, shadow):
            if mine.shape != theirs.shape:
                raise ValueError(f"EMA tensor of shape {tuple(theirs.shape)} where the model has {tuple(mine.shape)}")
            mine.copy_(theirs)
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
