"""Consistency sampling (Song et al. 2023, Algorithm 1): one step, or a few, of a consistency
function f(x_t, t), the map from any point of a probability-flow trajectory to its start.

A consistency model meets the samplers as a `Denoiser` (the preconditioning table's
"consistency" row): its output is the trajectory's x_0 rather than E[x_0 | x_t], and every step
here is one evaluation. The first maps the prior sample at T to x_0; each further grid time t_k
noises that x_0 afresh to the marginal there, x = alpha(t_k) x_0 + sigma(t_k) z, and maps it back.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..utils import append_dims, randn
from .registry import StepHook, register_sampler, run_hook


# The default grid: T, then noise levels down to 0.8 on Karras et al.'s rho-7 spacing; 2 steps
# are T and 0.8, near the intermediate level of the consistency papers' two-step samples.
@register_sampler("consistency", schedule="karras", end_noise_level=0.8,
                  deterministic=lambda options: False)
def consistency_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                        generator: Optional[torch.Generator] = None, *,
                        step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Multistep consistency sampling along `timesteps` (T first): x_0 = f(x, T); for each
    later t_k, x_0 = f(alpha(t_k) x_0 + sigma(t_k) z, t_k). NFE = len(timesteps)."""
    times = timesteps.to(torch.float64)
    x = run_hook(step_hook, x, float(times[0]))
    x0 = denoiser(x, float(times[0]))
    for t in times[1:].tolist():
        alpha, sigma = (append_dims(c.to(x.dtype).expand(x.shape[0]), x.ndim)
                        for c in sde.marginal_coefs(torch.tensor(t, dtype=torch.float64)))
        x = alpha * x0 + sigma * randn(x.shape, generator, x)
        x = run_hook(step_hook, x, t, x0)
        x0 = denoiser(x, t)
    return x0
