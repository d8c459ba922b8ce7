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

Improved consistency training (iCT; Song & Dhariwal 2023), the route from scratch, uses the same
pair loss on adjacent levels of a Karras grid (rho 7) whose size doubles over training,
N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1)) (their
eq. 8 and section 3.4), the lower level drawn from a discretised log-normal (section 3.5) and
the pseudo-Huber distance sqrt(||f - sg f||^2 + c^2) - c with c = 0.00054 sqrt(d) (section 3.3);
as in ECT the target is the online network without gradient, no EMA teacher.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..models.preconditioning import CONSISTENCY_SIGMA_MIN
from ..processes.denoiser import as_denoiser
from ..processes.sdes import SDE
from ..utils import append_dims, batch_sum, randn
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
    return _pair_loss(model, sde, x, t, level, gap, z,
                      lambda error: _pseudo_huber(_reduce(error ** 2, reduce_mean), huber_c), eps, class_labels)


def _pseudo_huber(squared: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(d^2 + c^2) - c of squared distances d^2; c = 0: d^2 itself."""
    return torch.sqrt(squared + c ** 2) - c if c > 0 else squared


def _pair_loss(model: Model, sde: SDE, x: torch.Tensor, t: torch.Tensor, level: torch.Tensor, gap: torch.Tensor,
               z: torch.Tensor, distance, eps: float, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
    """mean of d(f(x_n, n), sg f(x_r, r)) / (n - r) over the batch, for levels n = `level` at
    times t and r = `gap` on the same trajectories (noise z); where r = 0 the target is x."""
    consistency = as_denoiser(model, sde)
    alpha_t = append_dims(sde.marginal_coefs(t)[0], x.ndim)
    prediction = consistency(alpha_t * (x + append_dims(level, x.ndim) * z), t, class_labels)
    with torch.no_grad():
        target = x.clone()
        gap = gap.clone()
        noised = gap > 0
        if noised.any():
            r, gap_level = _time_and_level(sde, gap[noised], eps)
            gap[noised] = gap_level
            alpha_r = append_dims(sde.marginal_coefs(r)[0], x.ndim)
            x_r = alpha_r * (x[noised] + append_dims(gap_level, x.ndim) * z[noised])
            labels = class_labels[noised] if class_labels is not None else None
            target[noised] = consistency(x_r, r, labels)
    return (distance(prediction - target) / (level - gap)).mean()


def ict_levels(step: int, total_steps: int, sigma_min: float, sigma_max: float, *, s0: int = 10,
               s1: int = 1280, rho: float = 7.0) -> torch.Tensor:
    """iCT's noise levels at training step `step` of `total_steps`: N(k) levels of Karras' rho
    grid from sigma_min to sigma_max, N doubling from s0 + 1 to s1 + 1 (float64, ascending)."""
    doublings = math.floor(math.log2(s1 // s0)) + 1
    per_size = max(total_steps // doublings, 1)
    count = min(s0 * 2 ** (step // per_size), s1) + 1
    ramp = torch.linspace(0, 1, count, dtype=torch.float64)
    return (sigma_min ** (1 / rho) + ramp * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def ict_pair_probabilities(levels: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """p(i) of the pair (levels[i], levels[i + 1]): the mass a log-normal(p_mean, p_std) puts
    between them, normalised (iCT, section 3.5)."""
    mass = torch.diff(torch.erf((torch.log(levels) - p_mean) / (math.sqrt(2) * p_std)))
    return mass / mass.sum()


@register_loss("ict")
def ict_loss(model: Model, sde: SDE, x: torch.Tensor, *, step: int = 0, n_iters: int = 1, ict_s0: int = 10,
             ict_s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0, huber_c: float = 0.0,
             eps: float = 1e-5, generator: Optional[torch.Generator] = None,
             class_labels: Optional[torch.Tensor] = None, shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """iCT's loss at training step `step` of `n_iters`, the levels between CONSISTENCY_SIGMA_MIN
    and the process's noise level at T; huber_c = 0 means iCT's c = 0.00054 sqrt(d).
    Draws: one uniform per row (the pair), then z."""
    alpha_T, sigma_T = sde.marginal_coefs(torch.tensor(float(sde.T), dtype=torch.float64))
    levels = ict_levels(step, n_iters, CONSISTENCY_SIGMA_MIN, float(sigma_T / alpha_T), s0=ict_s0, s1=ict_s1)
    cumulative = torch.cumsum(ict_pair_probabilities(levels, p_mean, p_std), 0)
    rows = _global_rows(x, shard)
    u = _own_rows(torch.rand(rows, generator=generator, dtype=torch.float64, device=x.device), shard)
    pair = torch.searchsorted(cumulative.to(x.device), u, right=True).clamp(max=len(levels) - 2)
    levels = levels.to(device=x.device, dtype=x.dtype)
    z = _own_rows(randn((rows,) + x.shape[1:], generator, x), shard)
    t, level = _time_and_level(sde, levels[pair + 1], eps)
    c = huber_c if huber_c > 0 else 0.00054 * math.sqrt(x[0].numel())
    return _pair_loss(model, sde, x, t, level, levels[pair], z,
                      lambda error: _pseudo_huber(batch_sum(error ** 2), c), eps, class_labels)
