"""From a network to a score function score_fn(x, t), the one interface samplers, losses and the
likelihood use, so that trained networks and exact oracles are interchangeable.

Two parameterizations (Song et al. 2021, appendix; Karras et al. 2022, table 1 for the idea of a
wrapper per formulation, kept apart from the architecture):

- "eps" (VP, sub-VP): the network predicts the noise z in x_t = m(t) x_0 + s(t) z, so
  score = -eps_pred / s(t) (Ho et al. 2020, eq. 11 rearranged);
- "score" (VE): the network predicts the score itself; NCSN++ divides its output by sigma
  inside (`scale_by_sigma`), which keeps the output's scale near 1 at every noise level.

Noise labels, the network's conditioning input:
- VE: the marginal std sigma(t) (continuous and discrete alike; on chain step i, sigma_i);
- VP / sub-VP, continuous: t * 999, the reference code's convention, so that continuous and
  discrete DDPM-style networks see labels on the same 0..999 scale;
- VP, discrete: the (fractional) DDPM chain index whose alpha_bar equals alpha_bar(t), found by
  interpolating log alpha_bar over the chain. On chain step i (the losses and chain samplers
  score there, at `sde.chain_time(i)`) this is exactly i, the label DDPM trains with; in between,
  continuous-time samplers get the noise-level-consistent interpolation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..sdes import SDE, VESDE, ScoreFn, VPSDE
from ..utils import append_dims

# Continuous VP labels span the DDPM chain's index range (reference convention).
CONTINUOUS_LABEL_SCALE = 999.0


def default_parameterization(sde: SDE) -> str:
    return "score" if isinstance(sde, VESDE) else "eps"


def _fractional_chain_index(sde: VPSDE, t: torch.Tensor) -> torch.Tensor:
    """The real-valued i with log alpha_bar_i = log alpha_bar(t), linearly interpolated."""
    neg_log_alpha_bar = -torch.log(sde.discrete_alpha_bar).to(t.device)  # increasing in i
    target = sde.integrated_beta(t.to(torch.float64))                    # -log alpha_bar(t)
    upper = torch.searchsorted(neg_log_alpha_bar, target).clamp(1, sde.N - 1)
    low_value, high_value = neg_log_alpha_bar[upper - 1], neg_log_alpha_bar[upper]
    fraction = (target - low_value) / (high_value - low_value)
    return (upper - 1 + fraction).clamp(0, sde.N - 1)


def noise_labels(sde: SDE, t: torch.Tensor, *, continuous: bool = True) -> torch.Tensor:
    """The network's conditioning for time t ([B]); see the module docstring."""
    if isinstance(sde, VESDE):
        return sde.marginal_coefs(t)[1]
    if continuous:
        return t * CONTINUOUS_LABEL_SCALE
    if not isinstance(sde, VPSDE):
        raise ValueError(f"discrete time labels need the DDPM chain of a VP SDE, got {type(sde).__name__}")
    return _fractional_chain_index(sde, t)


def score_fn_from_model(model: nn.Module, sde: SDE, *, continuous: bool = True,
                        parameterization: Optional[str] = None) -> ScoreFn:
    """Wrap `model(x, labels)` as score_fn(x, t) under `sde` (the SDE the model was trained with:
    discrete labels refer to its chain, whatever chain a sampler later respaces to).

    The score function takes an optional third argument, class_labels [B], passed on to a
    class-conditional network as `model(x, labels, class_labels)`; without it the network is
    called as `model(x, labels)` (for a conditional network: the "no label" score)."""
    parameterization = parameterization or default_parameterization(sde)
    if parameterization not in ("eps", "score"):
        raise ValueError(f"parameterization must be 'eps' or 'score', got {parameterization!r}")

    def score_fn(x: torch.Tensor, t: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        labels = noise_labels(sde, t, continuous=continuous).to(x.dtype)
        output = model(x, labels) if class_labels is None else model(x, labels, class_labels)
        if parameterization == "score":
            return output
        std = sde.marginal_coefs(t)[1].to(x.dtype)
        return -output / append_dims(std, x.ndim)

    return score_fn
