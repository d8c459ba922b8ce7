"""From a network to a score function score_fn(x, t), the one interface samplers, losses and the
likelihood use, so that trained networks and exact oracles are interchangeable.

Two parameterizations (Song et al. 2021, appendix; Karras et al. 2022, table 1 for the idea of a
wrapper per formulation, kept apart from the architecture):

- "noise" (VP, sub-VP): the network predicts the noise z in x_t = m(t) x_0 + s(t) z, so
  score = -eps_pred / s(t) (Ho et al. 2020, eq. 11 rearranged);
- "score" (VE): the network predicts the score itself; NCSN++ divides its output by sigma
  inside (`scale_by_sigma`), which keeps the output's scale near 1 at every noise level.

Each SDE says which parameterization its networks use by default
(`SDE.default_parameterization`) and what the network sees as its noise label
(`SDE.noise_labels`: sigma(t) for VE, t * 999 or the DDPM chain index for VP).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..sdes import SDE, ScoreFn
from ..utils import append_dims


def score_fn_from_model(model: nn.Module, sde: SDE, *, continuous: bool = True,
                        parameterization: Optional[str] = None,
                        conditioning: Optional[Callable] = None) -> ScoreFn:
    """Wrap `model(x, labels)` as score_fn(x, t) under `sde` (the SDE the model was trained with:
    discrete labels refer to its chain, whatever chain a sampler later respaces to).

    The score function takes an optional third argument, class_labels [B], passed on to a
    class-conditional network as `model(x, labels, class_labels)`; without it the network is
    called as `model(x, labels)` (for a conditional network: the "no label" score).
    `conditioning(t) -> (labels, std)` replaces the SDE's noise labels and marginal std (the
    reference code's discrete-DDPM convention, `compat.reference_chain_conditioning`)."""
    parameterization = parameterization or sde.default_parameterization
    if parameterization not in ("noise", "score"):
        raise ValueError(f"parameterization must be 'noise' or 'score', got {parameterization!r}")

    def score_fn(x: torch.Tensor, t: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        if conditioning is None:
            labels, std = sde.noise_labels(t, continuous=continuous), None
        else:
            labels, std = conditioning(t)
        labels = labels.to(x.dtype)
        output = model(x, labels) if class_labels is None else model(x, labels, class_labels)
        if parameterization == "score":
            return output
        std = (sde.marginal_coefs(t)[1] if std is None else std).to(x.dtype)
        return -output / append_dims(std, x.ndim)

    return score_fn
