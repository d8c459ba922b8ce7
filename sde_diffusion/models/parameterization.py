"""Conversions between the quantities a Gaussian path x_t = alpha x_0 + sigma eps lets a network
predict (the losses compare them; `models.preconditioning` turns each into the denoiser).

- "score": grad log p_t(x_t) = -E[eps | x_t] / sigma;
- "noise": eps (Ho et al. 2020);
- "data": x_0 (Karras et al. 2022's denoiser D);
- "v": v = alpha eps - sigma x_0 (Salimans & Ho 2022, for any alpha, sigma);
- "velocity": the flow's dx_t / dt = alpha' x_0 + sigma' eps (flow matching, rectified flow;
  Lipman et al. 2023), where alpha' = f alpha and sigma' = (g^2 + 2 f sigma^2) / (2 sigma)
  follow from the SDE's drift f and diffusion g.

Each is affine in (x_t, prediction) given the time's (alpha, sigma, alpha', sigma'), so
`to_noise` and `from_noise` convert exactly. EDM's preconditioned output F (D = c_skip x +
c_out F(c_in x, c_noise)) also changes the network's input: a row of `models.preconditioning`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..utils import append_dims

PARAMETERIZATIONS = ("score", "noise", "data", "v", "velocity", "edm", "consistency")


class PathCoefs(NamedTuple):
    """alpha(t), sigma(t) and their time derivatives, each [B, 1, ...] like x."""
    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


def path_coefs(sde, t: torch.Tensor, like: torch.Tensor) -> PathCoefs:
    alpha, sigma = sde.marginal_coefs(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    d_alpha = f * alpha
    d_sigma = (g ** 2 + 2 * f * sigma ** 2) / (2 * sigma)
    return PathCoefs(*(append_dims(c.to(like.dtype), like.ndim) for c in (alpha, sigma, d_alpha, d_sigma)))


def to_noise(kind: str, prediction: torch.Tensor, x: torch.Tensor, c: PathCoefs) -> torch.Tensor:
    """The noise eps implied by a `kind` prediction at x_t = x."""
    if kind == "noise":
        return prediction
    if kind == "score":
        return -c.sigma * prediction
    if kind == "data":
        return (x - c.alpha * prediction) / c.sigma
    if kind == "v":  # solve x = alpha x0 + sigma eps, v = alpha eps - sigma x0 for eps
        return (c.sigma * x + c.alpha * prediction) / (c.alpha ** 2 + c.sigma ** 2)
    if kind == "velocity":  # solve x = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps
        return (c.alpha * prediction - c.d_alpha * x) / (c.alpha * c.d_sigma - c.sigma * c.d_alpha)
    raise ValueError(f"unknown parameterization {kind!r}; known: {', '.join(PARAMETERIZATIONS)}")


def from_noise(kind: str, noise: torch.Tensor, x: torch.Tensor, c: PathCoefs) -> torch.Tensor:
    """The `kind` quantity implied by the noise eps at x_t = x (the inverse of `to_noise`)."""
    data = (x - c.sigma * noise) / c.alpha
    return {"noise": noise, "score": -noise / c.sigma, "data": data, "v": c.alpha * noise - c.sigma * data,
            "velocity": c.d_alpha * data + c.d_sigma * noise}[kind]
