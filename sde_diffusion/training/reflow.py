"""Reflow (Liu et al. 2023, "Flow straight and fast", Algorithm 1): a flow model retrained on
the straight paths between the (noise, sample) pairs its own probability-flow ODE couples.

The teacher's ODE maps each noise z to a sample x_0 = ODE(z); the student then learns the
linear path x_t = alpha_t x_0 + sigma_t z between these fixed pairs (for rectified flow
x_t = (1 - t) x_0 + t z, velocity z - x_0) instead of independent draws of data and noise. The
paths of the coupled pairs cross far less than those of independent pairs, so the learned flow
is straighter and one or two Euler steps (DDIM on rectified flow) land near the ODE's solution.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..processes.sdes import SDE
from .losses import Model, _denoising_error, _times, _times_and_noise, register_loss


@register_loss("reflow")
def reflow_loss(model: Model, sde: SDE, x: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                reduce_mean: bool = False, time_sampling: str = "uniform", eps: float = 1e-5,
                generator: Optional[torch.Generator] = None, class_labels: Optional[torch.Tensor] = None,
                shard: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Flow matching on the path between each sample of `x` and its paired `noise` (this
    process's rows, like x): t ~ U(eps, T) (or logit-normal) drawn from `generator`, the same
    weighting as `flow_matching` (its error in the velocity). Without `noise` (the eval loss on
    test data, which has no pairs) it is flow matching with fresh noise."""
    from ..models.parameterization import path_coefs

    if noise is None:
        t, noise = _times_and_noise(sde, x, eps, generator, shard, time_sampling)
    else:
        t = _times(sde, x, eps, generator, shard, time_sampling)
    c = path_coefs(sde, t, t)
    weight = (c.d_alpha - c.d_sigma * c.alpha / c.sigma) ** 2
    return (0.5 * weight * _denoising_error(model, sde, x, t, noise, class_labels, reduce_mean)).mean()
