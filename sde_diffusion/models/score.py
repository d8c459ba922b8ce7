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
from .parameterization import PARAMETERIZATIONS, path_coefs, to_score


def score_fn_from_model(model: nn.Module, sde: SDE, *, continuous: bool = True,
                        parameterization: Optional[str] = None,
                        conditioning: Optional[Callable] = None) -> ScoreFn:
    """Wrap `model(x, labels)` as score_fn(x, t) under `sde` (the SDE the model was trained with:
    discrete labels refer to its chain, whatever chain a sampler later respaces to).

    `parameterization` (default: the SDE's) says what the network outputs (`parameterization`:
    score, noise, data, v, velocity), or "edm": EDM's preconditioning around it (input scaled by
    c_in, label c_noise, D = c_skip y + c_out F in the unscaled variables y = x / alpha; Karras
    et al. 2022, eq. 7 and table 1, sigma_data = EDM_SIGMA_DATA).
    The score function takes an optional third argument, class_labels [B], passed on to a
    class-conditional network as `model(x, labels, class_labels)`; without it the network is
    called as `model(x, labels)` (for a conditional network: the "no label" score).
    `conditioning(t) -> (labels, std)` replaces the SDE's noise labels and marginal std (the
    reference code's discrete-DDPM convention, `compat.reference_chain_conditioning`)."""
    parameterization = parameterization or sde.default_parameterization
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")

    def call(x, labels, class_labels):
        labels = labels.to(x.dtype)
        return model(x, labels) if class_labels is None else model(x, labels, class_labels)

    def score_fn(x: torch.Tensor, t: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        if parameterization == "edm":
            return _edm_score(call, sde, x, t, class_labels)
        if conditioning is None:
            labels, std = sde.noise_labels(t, continuous=continuous), None
        else:
            labels, std = conditioning(t)
        output = call(x, labels, class_labels)
        if parameterization == "score":
            return output
        if parameterization == "noise":
            std = (sde.marginal_coefs(t)[1] if std is None else std).to(x.dtype)
            return -output / append_dims(std, x.ndim)
        return to_score(parameterization, output, x, path_coefs(sde, t, x))

    return score_fn


EDM_SIGMA_DATA = 0.5  # the data's std EDM's preconditioning assumes (images in [-1, 1])


def _edm_score(call, sde: SDE, x: torch.Tensor, t: torch.Tensor, class_labels) -> torch.Tensor:
    alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coefs(t))
    noise = sigma / alpha  # EDM's sigma, in the unscaled variables y = x / alpha
    total = noise ** 2 + EDM_SIGMA_DATA ** 2
    c_skip, c_out, c_in = EDM_SIGMA_DATA ** 2 / total, noise * EDM_SIGMA_DATA / total.sqrt(), 1 / total.sqrt()
    y = x / alpha
    denoised = c_skip * y + c_out * call(c_in * y, torch.log(noise.flatten()) / 4, class_labels)
    return (alpha * denoised - x) / sigma ** 2
