"""One entry point for every sampler: `sample(score_fn, sde, shape, method=..., steps=...)`.

A sampler is a function `sampler(score_fn, sde, x, timesteps, generator, **options) -> x`
registered with `@register_sampler("name")`. It starts from `x` (a prior sample or a given
latent) at timesteps[0] and integrates the reverse process along the decreasing grid
`timesteps`. `sample` draws the prior, builds the grid and counts the score evaluations, so a
sampler cannot misreport its cost.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from ..sdes import SDE, ScoreFn
from ..utils import Registry, Seed, make_generator
from .schedules import get_timesteps

SAMPLERS: Registry = Registry("sampler")
register_sampler = SAMPLERS.register


class CountingScore:
    """Wraps a score function and counts its (batched) calls: the number of function
    evaluations (NFE) every sampler reports."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, t)


def sample(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], method: str = "pc",
           steps: Optional[int] = None, generator: Seed = None, *, eps: float = 1e-3,
           z: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32,
           device: Union[str, torch.device, None] = None, schedule: str = "uniform",
           rho: Optional[float] = None, power: Optional[float] = None, **options) -> Tuple[torch.Tensor, int]:
    """Draw samples of `shape` ([B, ...]) by `method` with `steps` steps; returns (x, nfe).

    steps: grid size (default sde.N); eps: the last time of the grid (the reverse process
    stops at t = eps > 0, where the score is still finite); z: start from this latent instead
    of a prior sample (decoding with `ode`); generator: an int seed or a torch.Generator
    that makes the run reproducible; schedule: the grid's spacing (`schedules.SCHEDULES`:
    uniform, quadratic, logsnr with `power`, karras with `rho`); options: the sampler's own.
    """
    sampler = SAMPLERS.get_or_raise(method)
    device = torch.device(device) if device is not None else (z.device if z is not None else torch.device("cpu"))
    generator = make_generator(generator, device)
    if z is None:
        x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
    else:
        x = z.to(device=device, dtype=dtype)
    schedule_options = {name: value for name, value in (("rho", rho), ("power", power)) if value is not None}
    timesteps = get_timesteps(sde, steps if steps is not None else sde.N, eps, schedule,
                              device=device, **schedule_options)
    counted = CountingScore(score_fn)
    x = sampler(counted, sde, x, timesteps, generator, **options)
    return x, counted.calls
