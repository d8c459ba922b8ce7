"""Adaptive step sizes for the reverse SDE: Algorithm 1 of Jolicoeur-Martineau et al. 2021
("Gotta Go Fast When Generating Data with Score-Based Models").

The reverse SDE dx = F(x, t) dt + g(t) dw_bar with F = f - g^2 score (Song et al. 2021, eq. 6)
is stepped backwards from t to s = t - h by two proposals that share one Brownian increment
sqrt(h) z:

    x_low  = x - h F(x, t) + sqrt(h) g(t) z                      (Euler-Maruyama)
    x_end  = x - h F(x_low, s) + sqrt(h) g(s) z                  (the same step, from the end)
    x_high = (x_low + x_end) / 2                                 (improved Euler, stochastic Heun)

Their gap estimates the local error of x_low. Measured against the mixed tolerance
delta = max(atol, rtol max(|x_low|, |x_low_prev|)) (element-wise; x_low_prev is x_low of the
last accepted step) it gives E = ||(x_low - x_high) / delta||_2 / sqrt(D). The step is accepted
when E <= 1 and then carries x_high on (the paper's extrapolation: the error is controlled for
the low-order value, the more accurate one is kept). Either way the next step is
h = min(t - eps, safety h E^(-r)).

By default every sample keeps its own time, step size and x_low_prev and is accepted or
rejected alone, so a hard sample shrinks only its own steps; samples that have reached eps
leave the batch the score sees. NFE counts these batched calls: two per iteration (plus one
for `denoise`), so it is set by the slowest sample.

A caveat for low-dimensional data. The gap x_low - x_high is dominated by the shared Brownian
draw (terms in h^(3/2) z), so with few dimensions a sample's E is mostly noise: many steps are
rejected, and since a rejected draw is replaced by a fresh one, the accepted draws are the ones
with small E. That selection biases the samples (too wide components; docs/package.md gives the
measured sizes), and tighter tolerances do not help. The paper's images have thousands of
dimensions, over which E averages out and rejections are rare.
`per_sample=False` measures E over the whole batch instead (one time and step for all
samples), which averages the noise out the same way; use it for data of few dimensions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE, ReverseSDE
from ..utils import append_dims, randn
from .ode import MAX_NFE, SolveWatch
from .registry import register_sampler


def _proposals(reverse: ReverseSDE, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
               noise: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_low, x_high) of one step from t to s < t (per-sample [B] times) with one noise draw."""
    h = append_dims(t - s, x.ndim)
    brownian = h.sqrt() * noise  # the increment both proposals share
    drift, g = reverse.sde(x, t)
    x_low = x - h * drift + append_dims(g, x.ndim) * brownian
    drift_end, g_end = reverse.sde(x_low, s)
    x_end = x - h * drift_end + append_dims(g_end, x.ndim) * brownian
    return x_low, 0.5 * (x_low + x_end)


def _scaled_error(x_low: torch.Tensor, x_high: torch.Tensor, x_low_prev: torch.Tensor,
                  rtol: float, atol: float) -> torch.Tensor:
    """E per sample: the RMS over dimensions of (x_low - x_high) / delta (Algorithm 1's E_2)."""
    delta = (rtol * torch.maximum(x_low.abs(), x_low_prev.abs())).clamp_min(atol)
    scaled = ((x_low - x_high) / delta).reshape(x_low.shape[0], -1)
    return scaled.pow(2).mean(dim=1).sqrt()


def _check_options(rtol: float, atol: float, safety: float, exponent: float, h_init: float,
                   max_iterations: int) -> None:
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    if not atol > 0:  # delta must stay positive where x crosses zero
        raise ValueError(f"atol must be > 0, got {atol}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must lie in (0, 1], got {safety}")
    if not exponent > 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if not h_init > 0:
        raise ValueError(f"h_init must be > 0, got {h_init}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")


@register_sampler("adaptive_sde", adaptive=lambda options: True)
def adaptive_sde_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                         generator: Optional[torch.Generator] = None, *, rtol: float = 0.05,
                         atol: float = 0.0078, safety: float = 0.9, exponent: float = 0.9,
                         h_init: float = 0.01, denoise: bool = True, per_sample: bool = True,
                         max_iterations: int = 100_000, max_nfe: int = MAX_NFE) -> torch.Tensor:
    """Integrate the reverse SDE from timesteps[0] (T) to timesteps[-1] (eps) with the
    adaptive steps of Jolicoeur-Martineau et al. 2021, Algorithm 1; only the grid's ends
    matter, the solver picks its own times.

    rtol, atol: their eps_rel and eps_abs (0.0078 ~ 1/128 suits data in [-1, 1]); safety:
    theta; exponent: r; h_init: the first step, in time units; denoise: return Tweedie's
    E[x_0 | x_eps] at the end (+1 NFE), as the paper does; per_sample: a time and step size
    per sample (the paper's), or False for one shared by the batch, whose error is the RMS over
    all its elements (see the module's note on low dimensions); max_iterations, max_nfe: raise
    SolverStopped (a RuntimeError, one line) after that many attempted steps (each 2 NFE) or score
    evaluations when some sample has still not reached eps; it logs where it is meanwhile.
    """
    _check_options(rtol, atol, safety, exponent, h_init, max_iterations)
    t_start, t_end = timesteps[0].to(x.dtype), timesteps[-1].to(x.dtype)
    if not t_start > t_end:
        raise ValueError(f"adaptive_sde integrates backwards: need timesteps[0] > timesteps[-1], "
                         f"got {float(t_start)} and {float(t_end)}")
    reverse = sde.reverse(denoiser.score)
    batch = x.shape[0]
    t = t_start.expand(batch).clone()
    h = torch.full_like(t, h_init).clamp_max(t_start - t_end)
    x_low_prev = x  # the paper's initial x'_prev is the starting point itself
    watch = SolveWatch("adaptive_sde sampler", float(t_start), float(t_end), max_nfe, f"rtol={rtol:g}, atol={atol:g}")
    for iteration in range(max_iterations + 1):
        # The one host sync per iteration: which samples still move (an adaptive loop needs it).
        moving = torch.nonzero(t > t_end).squeeze(1)
        if moving.numel() == 0:
            break
        if iteration == max_iterations:
            raise watch.stopped(f"{moving.numel()} of {batch} samples still short of the end after "
                                f"{max_iterations} iterations", "loosen rtol/atol or raise max_iterations")
        watch(t, calls=2)  # counted, capped at max_nfe, logged; t is read only to log or stop
        x_m, t_m, h_m = x[moving], t[moving], h[moving]
        # Land exactly on eps when the step reaches it, so no sliver of time is left over.
        s_m = torch.where(h_m >= t_m - t_end, t_end, t_m - h_m)
        x_low, x_high = _proposals(reverse, x_m, t_m, s_m, randn(x_m.shape, generator, x_m))
        error = _scaled_error(x_low, x_high, x_low_prev[moving], rtol, atol)
        if not per_sample:  # all samples share t and h, so all move: the RMS over the batch
            error = error.pow(2).mean().sqrt().expand_as(error)
        # one host sync for both checks: a finite error, and steps that still move time in this precision
        finite, moves = torch.stack([torch.isfinite(error).all(), (s_m < t_m).all()]).tolist()
        watch.check_finite(finite)
        if not moves:
            raise watch.stopped(f"its step fell below the resolution of {x.dtype} times", "loosen rtol/atol")
        accept = error <= 1
        keep = append_dims(accept, x.ndim)
        t_new = torch.where(accept, s_m, t_m)
        # error = 0 gives an infinite proposal, which the remaining time caps.
        h_new = torch.minimum(t_new - t_end, safety * h_m * error.pow(-exponent))
        x = x.index_copy(0, moving, torch.where(keep, x_high, x_m))
        x_low_prev = x_low_prev.index_copy(0, moving, torch.where(keep, x_low, x_low_prev[moving]))
        t, h = t.index_copy(0, moving, t_new), h.index_copy(0, moving, h_new)
    if denoise:
        x = denoiser(x, t_end.expand(batch))
    return x
