"""Time-step schedules: where on [eps, T] a sampler evaluates the score.

A schedule is a function `schedule(sde, steps, eps, **options) -> times` returning `steps`
float64 times decreasing from T to eps, registered by name. Samplers take the grid as data;
every sampler appends the final time 0 itself (its last step goes to the data, see
`sampling.registry`). Schedules that are defined by noise levels are mapped to times through
the SDE's own log-SNR, so each works for VP, sub-VP and VE alike.
"""
from __future__ import annotations

import torch

from ..processes.sdes import SDE
from ..utils import Registry

SCHEDULES: Registry = Registry("schedule")
register_schedule = SCHEDULES.register


def _check(sde: SDE, steps: int, eps: float) -> None:
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T={sde.T}), got {eps}")


def _fraction(steps: int, device) -> torch.Tensor:
    """0 ... 1 in `steps` points (a single point: 0, the start)."""
    if steps == 1:
        return torch.zeros(1, dtype=torch.float64, device=device)
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=device)


def _log_snr_ends(sde: SDE, eps: float, device):
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64, device=device))
    if not torch.isfinite(ends).all():
        raise ValueError(f"schedules in log-SNR need a positive noise level at eps; {type(sde).__name__}'s "
                         f"is 0 at t = {eps:g} (log-SNR infinite)")
    return ends


@register_schedule("uniform")
def uniform_schedule(sde: SDE, steps: int, eps: float = 1e-3, device=None) -> torch.Tensor:
    """Uniform in t, the grid of Song et al. 2021."""
    return sde.T + (eps - sde.T) * _fraction(steps, device)


@register_schedule("quadratic")
def quadratic_schedule(sde: SDE, steps: int, eps: float = 1e-3, device=None) -> torch.Tensor:
    """Uniform in sqrt(t): denser near the data (the "quadratic" spacing of Song et al. 2021a, DDIM)."""
    start, end = sde.T ** 0.5, eps ** 0.5
    return (start + (end - start) * _fraction(steps, device)) ** 2


@register_schedule("logsnr")
def log_snr_schedule(sde: SDE, steps: int, eps: float = 1e-3, device=None, power: float = 1.0) -> torch.Tensor:
    """Uniform in log-SNR lambda(t) (Lu et al. 2022, DPM-Solver's recommended grid), or, with
    power p != 1, lambda_i = lambda(T) + (lambda(eps) - lambda(T)) u_i^p for u uniform on [0, 1].
    p < 1 makes the steps at low SNR, where the denoiser is nearly the data mean and the
    solvers' exponential integrators are nearly exact, long and those at high SNR, where the
    data's fine structure (narrow modes) resolves, short."""
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    start, end = _log_snr_ends(sde, eps, device)
    return sde.time_of_log_snr(start + (end - start) * _fraction(steps, device) ** power)


@register_schedule("karras")
def karras_schedule(sde: SDE, steps: int, eps: float = 1e-3, device=None, rho: float = 7.0) -> torch.Tensor:
    """Uniform in sigma^(1/rho), where sigma = s(t)/m(t) = exp(-lambda/2) is the noise level of
    x/m(t) (Karras et al. 2022, eq. 5; rho = 7 in their experiments)."""
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    start, end = (torch.exp(-0.5 * lam) ** (1.0 / rho) for lam in _log_snr_ends(sde, eps, device))
    sigma = (start + (end - start) * _fraction(steps, device)) ** rho
    return sde.time_of_log_snr(-2.0 * torch.log(sigma))


def get_timesteps(sde: SDE, steps: int, eps: float = 1e-3, schedule: str = "uniform",
                  device=None, **options) -> torch.Tensor:
    """`steps` times from T down to eps on the named schedule (options: e.g. rho for karras)."""
    _check(sde, steps, eps)
    function = SCHEDULES.get_or_raise(schedule)
    times = function(sde, int(steps), eps, device=device, **options)
    if getattr(function, "own_ends", False):  # given times (diffusers' timesteps), not a grid from T to eps
        return times
    # Pin the ends exactly: the round trip through log-SNR is accurate only to ~1e-15.
    times[0] = sde.T
    if steps > 1:
        times[-1] = eps
    return times
