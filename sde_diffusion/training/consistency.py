"""Easy Consistency Tuning (Geng et al. 2024): a diffusion model of this package tuned into a
consistency model f(x_t, t) (the preconditioning table's "consistency" row, the same network F
as EDM's row), by shrinking the gap between two noise levels over training.

For noise levels n > r on the same trajectory of the forward process, x_t = alpha_t (x_0 + n z)
and x_r = alpha_r (x_0 + r z) with one z, the loss is

    w(n, r) d(f(x_t, t), sg f(x_r, r)),    w = 1 / (n - r)            (ECT, eqs. 7-8)

where sg stops the gradient and d is the squared distance (or iCT's pseudo-Huber). The gap
follows ECT's mapping r = n (1 - q^-ceil(i / d) m(n)), m(n) = 1 + k sigmoid(-b n), with
i the training step and d = total steps / stages: at i = 0 the factor is 1 - m(n) < 0, r is
clamped to 0 where the target is the data x_0 itself, and the loss is the denoising loss
||f - x_0||^2 / n of a diffusion model, which is why tuning can start from one; as i grows, r
approaches n and f becomes consistent along each trajectory. Noise levels are EDM's log-normal.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..models.preconditioning import CONSISTENCY_SIGMA_MIN
from ..processes.denoiser import as_denoiser
from ..processes.sdes import SDE
from ..utils import append_dims, randn
from .losses import Model, _global_rows, _own_rows, _reduce, register_loss


def ect_gap_level(level: torch.Tensor, step: int, total_steps: int, *, stages: int = 8, q: float = 2.0,
                  k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """The second noise level r for levels n at training step `step` (ECT's mapping, clamped at 0)."""
    stage = math.ceil(step * stages / max(total_steps, 1))
    shrink = q ** -stage * (1 + k * torch.sigmoid(-b * level))
    return (level * (1 - shrink)).clamp(min=0)


def _time_and_level(sde: SDE, level: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The time of each noise level, kept within [eps, T], and the noise level there."""
    t = sde.time_of_log_snr(-2 * torch.log(level)).clamp(eps, sde.T)
    alpha, sigma = sde.marginal_coefs(t)
    return t, sigma / alpha


@register_loss("ect")
def ect_loss(model: Model, sde: SDE, x: torch.Tensor, *, step: int = 0, n_iters: int = 1,
             ect_stages: int = 8, ect_q: float = 2.0, ect_k: float = 8.0, ect_b: float = 1.0,
             p_mean: float = -1.1, p_std: float = 2.0, huber_c: float = 0.0, reduce_mean: bool = True,
             eps: float = 1e-5, generator: Optional[torch.Generator] = None,
             class_labels: Optional[torch.Tensor] = None, shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """ECT's loss at training step `step` of `n_iters`; `model` is the consistency function (a
    network behind the "consistency" row). huber_c > 0: iCT's pseudo-Huber distance
    sqrt(||.||^2 + c^2) - c instead of the squared one. Draws: the levels' normals, then z."""
    rows = _global_rows(x, shard)
    t, level = _time_and_level(sde, torch.exp(p_mean + p_std * _own_rows(randn((rows,), generator, x), shard)), eps)
    z = _own_rows(randn((rows,) + x.shape[1:], generator, x), shard)
    gap = ect_gap_level(level, step, n_iters, stages=ect_stages, q=ect_q, k=ect_k, b=ect_b)
    # below the consistency function's own boundary its value is (nearly) the data: use the data
    gap = torch.where(gap > CONSISTENCY_SIGMA_MIN, gap, torch.zeros_like(gap))
    consistency = as_denoiser(model, sde)
    alpha_t = append_dims(sde.marginal_coefs(t)[0], x.ndim)
    prediction = consistency(alpha_t * (x + append_dims(level, x.ndim) * z), t, class_labels)
    with torch.no_grad():
        target = x.clone()
        noised = gap > 0
        if noised.any():
            r, gap_level = _time_and_level(sde, gap[noised], eps)
            gap[noised] = gap_level
            alpha_r = append_dims(sde.marginal_coefs(r)[0], x.ndim)
            x_r = alpha_r * (x[noised] + append_dims(gap_level, x.ndim) * z[noised])
            labels = class_labels[noised] if class_labels is not None else None
            target[noised] = consistency(x_r, r, labels)
    distance = _reduce((prediction - target) ** 2, reduce_mean)
    if huber_c > 0:
        distance = torch.sqrt(distance + huber_c ** 2) - huber_c
    return (distance / (level - gap)).mean()
