"""From a network to its denoiser: the preconditioning table.

Whatever a network predicts, D(x, t) = E[x_0 | x_t = x] is affine in its output F,

    D(x, t) = c_skip x + c_out F(c_in x, c_noise),

with coefficients of the time's alpha, sigma (x_t = alpha x_0 + sigma eps) and their derivatives
alpha', sigma': EDM's table 1 (Karras et al. 2022) generalised to every quantity a network of
this package predicts. One row per `parameterization`:

| row      | F predicts                           | c_skip                     | c_out                      | c_in |
|----------|--------------------------------------|----------------------------|----------------------------|------|
| score    | grad log p_t                         | 1 / alpha                  | sigma^2 / alpha            | 1    |
| noise    | eps (Ho et al. 2020)                 | 1 / alpha                  | -sigma / alpha             | 1    |
| data     | x_0                                  | 0                          | 1                          | 1    |
| v        | alpha eps - sigma x_0 (Salimans & Ho)| alpha / (alpha^2+sigma^2)  | -sigma / (alpha^2+sigma^2) | 1    |
| velocity | alpha' x_0 + sigma' eps (flow)       | sigma' / W                 | -sigma / W                 | 1    |
| edm      | EDM's F, with n = sigma / alpha      | s_d^2 / (alpha (n^2+s_d^2))| n s_d / sqrt(n^2+s_d^2)    | 1 / (alpha sqrt(n^2+s_d^2)) |
| consistency | F of f(x, n), f(x, n_min) = x     | s_d^2 / (alpha ((n-n_min)^2+s_d^2)) | (n-n_min) s_d / sqrt(n^2+s_d^2) | as edm |

where W = alpha sigma' - sigma alpha' and s_d = EDM_SIGMA_DATA. The noise label c_noise is the
process's own (`SDE.noise_labels`: t * 999 or the DDPM chain index on VP, sigma on VE) except for
EDM's and the consistency row, whose label is ln(n) / 4 (their eq. 7). The consistency row is a
consistency function (Song et al. 2023, eq. 5 with their c_skip, c_out): the same network F as
EDM's row, so a model trained with EDM's row is tuned into one (`training.consistency`); at
n = n_min = CONSISTENCY_SIGMA_MIN it returns x / alpha exactly, the boundary condition. alpha' = f alpha and sigma' = (g^2 + 2 f
sigma^2) / (2 sigma) follow from the SDE's drift f and diffusion g.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..utils import append_dims
from .parameterization import PARAMETERIZATIONS, path_coefs

EDM_SIGMA_DATA = 0.5  # the data's std EDM's preconditioning assumes (images in [-1, 1])
CONSISTENCY_SIGMA_MIN = 0.002  # where a consistency function is the identity (Song et al. 2023's epsilon)
OWN_LABEL_ROWS = ("edm", "consistency")  # rows whose c_noise replaces the process's noise labels


class Coefficients(NamedTuple):
    """c_skip, c_out, c_in of D = c_skip x + c_out F(c_in x, c_noise), each broadcasting against
    x; c_noise [B] where the row sets the label (EDM's), None where the process's own is used."""
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: Optional[torch.Tensor] = None


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA) -> Tuple[torch.Tensor, ...]:
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level sigma in unscaled variables (Karras et
    al. 2022, eq. 7 and table 1): unit-variance network input and target."""
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), torch.log(sigma) / 4


def coefficients(parameterization: str, sde: SDE, t: torch.Tensor, like: torch.Tensor,
                 std: Optional[torch.Tensor] = None) -> Coefficients:
    """The table's row `parameterization` at times t ([B]); `std` replaces sigma in the noise
    row's output scale only (the reference code's discrete DDPM convention, `compat`)."""
    if parameterization == "velocity":  # the only row that needs alpha' and sigma'
        c = path_coefs(sde, t, like)
        wronskian = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        return Coefficients(c.d_sigma / wronskian, -c.sigma / wronskian, torch.ones_like(c.alpha))
    alpha, sigma = (append_dims(coef.to(like.dtype), like.ndim) for coef in sde.marginal_coefs(t))
    one = torch.ones_like(alpha)
    if parameterization == "score":
        return Coefficients(1 / alpha, sigma ** 2 / alpha, one)
    if parameterization == "noise":
        # score = -F / std, so D = (x + sigma^2 score) / alpha = (x - sigma^2 / std F) / alpha
        out = -sigma if std is None else -sigma ** 2 / append_dims(std.to(like.dtype), like.ndim)
        return Coefficients(1 / alpha, out / alpha, one)
    if parameterization == "data":
        return Coefficients(torch.zeros_like(one), one, one)
    if parameterization == "v":
        total = alpha ** 2 + sigma ** 2
        return Coefficients(alpha / total, -sigma / total, one)
    if parameterization == "edm":
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma / alpha)
        return Coefficients(c_skip / alpha, c_out, c_in / alpha, c_noise.flatten())
    if parameterization == "consistency":
        level = sigma / alpha
        _, _, c_in, c_noise = edm_coefficients(level)
        above = level - CONSISTENCY_SIGMA_MIN
        c_skip = EDM_SIGMA_DATA ** 2 / (above ** 2 + EDM_SIGMA_DATA ** 2)
        c_out = above * EDM_SIGMA_DATA / (level ** 2 + EDM_SIGMA_DATA ** 2).sqrt()
        return Coefficients(c_skip / alpha, c_out, c_in / alpha, c_noise.flatten())
    raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")


def denoiser_from_model(model: nn.Module, sde: SDE, *, continuous: bool = True,
                        parameterization: Optional[str] = None,
                        conditioning: Optional[Callable] = None, family: Optional[str] = None) -> Denoiser:
    """The Denoiser of `model(x, labels)` trained under `sde` (discrete labels refer to its
    chain, whatever chain a sampler later respaces to), by the table's row `parameterization`
    (default: the SDE's, `SDE.default_parameterization`).

    Called with class_labels [B], the denoiser calls a class-conditional network as
    `model(x, labels, class_labels)`; without, as `model(x, labels)` (for a conditional network:
    the "no label" prediction). `conditioning(t) -> (labels, std)` replaces the SDE's noise
    labels and the noise row's std (the reference code's discrete DDPM convention,
    `published.score_sde.reference_chain_conditioning`). `family`: the Denoiser's
    (`Denoiser.family`), by default the row; a published network's source ("diffusers",
    "score_sde"), so that samplers run it as its authors do."""
    parameterization = parameterization or sde.default_parameterization
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")

    def denoise(x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels = std = None
        if parameterization not in OWN_LABEL_ROWS:
            labels, std = ((sde.noise_labels(t, continuous=continuous), None) if conditioning is None
                           else conditioning(t))
        c = coefficients(parameterization, sde, t, x, std)
        labels = (c.c_noise if labels is None else labels).to(x.dtype)
        inputs = c.c_in * x
        output = model(inputs, labels) if class_labels is None else model(inputs, labels, class_labels)
        return c.c_skip * x + c.c_out * output

    return Denoiser(sde, denoise, family=family or parameterization)
