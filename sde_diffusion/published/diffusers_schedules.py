"""diffusers' inference timesteps as grids of this package: schedules `diffusers_<rule>_<spacing>`.

diffusers' schedulers pick `steps` integer (or, for EulerDiscreteScheduler's "linspace",
fractional) timesteps of the N-step training chain by their `timestep_spacing` ("linspace",
"leading", "trailing"; Lin et al. 2023, table 2), each scheduler by its own rule:

| rule  | schedulers                        | timesteps for `steps` = n                                   |
|-------|-----------------------------------|-------------------------------------------------------------|
| ddim  | DDIM, DDPM, PNDM (rounded)        | n points: round(linspace(0, N-1, n)); k (N // n) + offset; round(N - k N / n) - 1 |
| euler | EulerDiscrete(Ancestral), Heun    | as ddim, linspace not rounded (float32)                     |
| dpm   | DPMSolverMultistep, UniPC         | n + 1 points by the same spacing, the last (the data) dropped; trailing as ddim |

Each then steps to the data (sigma = 0) after its last timestep, as this package's samplers do
after the last time of a grid. Timestep i is the time (i + 1) / N of a `DiscreteVP`
(`processes.discrete_vp`), so a sampler run on one of these grids evaluates the network at
diffusers' timesteps, and its first time is diffusers' first timestep, not T: these grids are
given whole (`own_ends`), and ignore eps.
"""
from __future__ import annotations

import numpy as np
import torch

from ..processes.discrete_vp import DiscreteVP
from ..processes.sdes import SDE
from ..sampling.schedules import register_schedule

RULES = ("ddim", "euler", "dpm")
SPACINGS = ("linspace", "leading", "trailing")


def diffusers_timesteps(num_train_timesteps: int, steps: int, spacing: str, rule: str = "ddim",
                        steps_offset: int = 0) -> np.ndarray:
    """The decreasing timesteps (float64) a diffusers scheduler of `rule` (RULES) runs for
    `steps` inference steps with `timestep_spacing` = `spacing` on a chain of num_train_timesteps."""
    N, n = int(num_train_timesteps), int(steps)
    if rule not in RULES or spacing not in SPACINGS:
        raise ValueError(f"rule must be one of {RULES} and spacing one of {SPACINGS}, got {rule!r}, {spacing!r}")
    points = n + 1 if rule == "dpm" and spacing != "trailing" else n  # dpm lays the data's end too
    if not 1 <= points <= N:
        raise ValueError(f"{steps} inference steps cannot be laid on a chain of {N} timesteps")
    if spacing == "linspace":
        timesteps = np.linspace(0, N - 1, points)
        timesteps = timesteps.astype(np.float32) if rule == "euler" else timesteps.round()
    elif spacing == "leading":
        timesteps = np.arange(0, points) * (N // points) + steps_offset
    else:
        timesteps = np.round(np.arange(N, 0, -N / n)) - 1
        return timesteps.astype(np.float64)
    timesteps = timesteps[::-1].astype(np.float64)
    return timesteps[:-1] if points > n else timesteps


def _register(rule: str, spacing: str) -> None:
    def schedule(sde: SDE, steps: int, eps: float = 0.0, device=None) -> torch.Tensor:
        if not isinstance(sde, DiscreteVP):
            raise ValueError(f"schedule 'diffusers_{rule}_{spacing}' picks timesteps of a discrete_vp chain "
                             f"(a diffusers pipeline's process), not of {type(sde).__name__}")
        indices = diffusers_timesteps(sde.table_size, steps, spacing, rule, sde.steps_offset)
        return sde.table_time(torch.from_numpy(indices.copy())).to(device)

    schedule.__doc__ = f"diffusers' {spacing!r} timesteps by the {rule} rule (module docstring), as times."
    schedule.own_ends = True  # the grid is diffusers' timesteps, first to last: nothing is pinned to T or eps
    register_schedule(f"diffusers_{rule}_{spacing}")(schedule)


for _rule in RULES:
    for _spacing in SPACINGS:
        _register(_rule, _spacing)
