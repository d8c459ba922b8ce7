"""Inpainting by sequential Monte Carlo: a particle filter over the reverse process that targets
the exact conditional p(x_missing | y) as the discretized reverse process approaches the
forward one (SMCDiff, Trippe et al. 2022, sec. 4 and Algorithm 1).

Why. Every predictor of `pc.py` is a diagonal Gaussian step,
x_{k+1} ~ N(a_k x_k + b_k score(x_k, s_k), c_k^2 I), so its law factorizes over coordinates given
x_k: the observed part and the missing part are drawn independently. Take one forward-diffused
trajectory of the observation, y_0 (noisiest, at the first score time) ... y_K = y (at t = 0),
drawn jointly as the forward process draws it. Conditioning the reverse chain on that whole
trajectory is a filtering problem whose one-step likelihood is the observed part's reverse
transition, p(y_{k+1} | x_k) = N(y_{k+1}; [a_k x_k + b_k score]_obs, c_k^2 I); and when the
reverse chain equals the forward one, p(x_missing,k | y_{k:K}) = p_{s_k}(x_missing | y_k) because
the forward noise of the observed coordinates is independent of everything else, so the filter's
last marginal is the exact p(x_missing | y).

The filter ("fully adapted": the likelihood depends on x_k only), per population of particles
sharing one y trajectory, at each step k:
  1. mean = a_k x + b_k score(x, s_k)                                       (one score call)
  2. log w += -||y_{k+1} - mean_obs||^2 / (2 c_k^2)                         (SMCDiff, eq. 7)
  3. where the effective sample size (sum w)^2 / sum w^2 < ess_threshold * K: systematic
     resampling of the means, and the weights reset to equal
  4. x_missing = mean_missing + c_k z, x_obs = y_{k+1}; optional corrector steps at s_{k+1} on x,
     with x_obs set back to y_{k+1} after each (Langevin on the missing part given y_{k+1} keeps
     p_{s_{k+1}}(x_missing | y_{k+1}), the filter's target, invariant).
The cost is the replacement sampler's per particle: one score call per predictor and corrector
step on the whole batch of particles; weights and resampling are arithmetic.

The trajectory y is drawn on the fly, from the noisiest end: y_0 ~ N(m_0 y, s_0^2 I), then
y_{k+1} from the forward process's posterior q(y_{k+1} | y_k, y) (Ho et al. 2020, eq. 6-7 for any
linear SDE): with r = m_k / m_{k+1} and v = s_k^2 - r^2 s_{k+1}^2 the forward step's variance,
mean = (m_{k+1} v y + r s_{k+1}^2 y_k) / s_k^2 and variance = s_{k+1}^2 v / s_k^2. This is the
same joint law as noising y forward, without storing the trajectory.

Finite populations bias the output toward the reverse chain's unconditional proposal by O(1/K)
(README, controllable generation, measures it). Many observed pixels make the weights uneven
at every step and the filter degenerate, so for images with thousands of observed pixels the
replacement method (`controllable.replacement`) remains the practical choice.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..utils import batch_sum, randn
from .pc import CORRECTORS, plan_predictor


def observation_bridge(sde: SDE, score_times: torch.Tensor) -> Tuple[List[float], ...]:
    """The coefficients of the observation trajectory at the filter's states: the states are at
    score_times[0], ..., score_times[-1] and then at t = 0 exactly (m = 1, s = 0). Returns
    (m_0, s_0) of the first state and, per step k, (y_coef, previous_coef, std) of
    y_{k+1} = y_coef y + previous_coef y_k + std z, the posterior q(y_{k+1} | y_k, y)."""
    mean_coef, std = sde.marginal_coefs(score_times.to(torch.float64))
    mean_coef = torch.cat([mean_coef, mean_coef.new_ones(1)])
    std = torch.cat([std, std.new_zeros(1)])
    ratio = mean_coef[:-1] / mean_coef[1:]
    step_variance = (std[:-1] ** 2 - ratio ** 2 * std[1:] ** 2).clamp_min(0)
    y_coef = mean_coef[1:] * step_variance / std[:-1] ** 2
    previous_coef = ratio * std[1:] ** 2 / std[:-1] ** 2
    bridge_std = torch.sqrt(std[1:] ** 2 * step_variance) / std[:-1]
    return (mean_coef[0].item(), std[0].item(), y_coef.tolist(), previous_coef.tolist(),
            bridge_std.tolist())


def systematic_resampling(log_weights: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Ancestor indices [B, K] for B populations of K particles with `log_weights` [B, K]: one
    uniform per population, K evenly spaced points through the weights' CDF (Douc et al. 2005)."""
    populations, particles = log_weights.shape
    cdf = torch.cumsum(torch.softmax(log_weights, dim=1), dim=1)
    offset = torch.rand((populations, 1), generator=generator, dtype=cdf.dtype, device=cdf.device)
    points = (offset + torch.arange(particles, dtype=cdf.dtype, device=cdf.device)) / particles
    return torch.searchsorted(cdf, points).clamp_max(particles - 1)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2 per population ([B, K] -> [B])."""
    return torch.exp(2 * torch.logsumexp(log_weights, 1) - torch.logsumexp(2 * log_weights, 1))


def _take(x: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    """x [B, K, ...] reordered along the particle axis by ancestors [B, K]."""
    return torch.gather(x, 1, ancestors.reshape(ancestors.shape + (1,) * (x.ndim - 2)).expand_as(x))


def smc_inpaint_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                        generator: Optional[torch.Generator] = None, *, observation: torch.Tensor,
                        mask: torch.Tensor, predictor: str = "reverse_diffusion",
                        corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
                        denoise: bool = True, ess_threshold: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Filter B populations of K particles x ([B, K, ...], prior samples) along `timesteps`;
    population b is conditioned on observation[b] ([B, ...]) where `mask` (bool, broadcastable
    to observation) is true. Returns (particles [B, K, ...], log-weights [B, K] normalized per
    population); the observed entries of the particles equal the observation. Options as
    `pc_sampler`'s; the predictor must take a noisy step (not "none")."""
    populations, particles = x.shape[:2]
    steps = len(timesteps)
    sde, index, x_coefs, score_coefs, noise_stds, score_times = plan_predictor(sde, timesteps, predictor)
    if x_coefs is None:
        raise ValueError("SMC inpainting needs a predictor: its weights are the predictor step's density")
    correct = CORRECTORS.get_or_raise(corrector)(sde, score_times[1:], index[1:], snr, 1)
    start_mean, start_std, y_coefs, previous_coefs, bridge_stds = observation_bridge(sde, score_times)

    def flat(v):  # populations x particles -> one batch for the score network
        return v.reshape((populations * particles,) + tuple(v.shape[2:]))

    def unflat(v):
        return v.reshape((populations, particles) + tuple(v.shape[1:]))

    # One y trajectory per population, shared by its particles (the [B, 1, ...] axis).
    mask = mask.reshape((1,) * (observation.ndim - mask.ndim) + tuple(mask.shape))[:, None]
    observation = observation[:, None]
    y_t = start_mean * observation + start_std * randn(observation.shape, generator, observation)
    x = torch.where(mask, y_t, x)
    t_batch = score_times.to(x.dtype)[:, None].expand(steps, populations * particles)
    log_weights = x.new_zeros(populations, particles)
    x_mean = x
    for k in range(steps):
        x_mean = unflat(torch.add(flat(x) * x_coefs[k], denoiser.score(flat(x), t_batch[k]), alpha=score_coefs[k]))
        y_next = (y_coefs[k] * observation + previous_coefs[k] * y_t
                  + bridge_stds[k] * randn(observation.shape, generator, observation))
        if noise_stds[k] > 0:  # a deterministic step carries no information about y
            log_weights = log_weights - batch_sum(flat(torch.where(mask, (y_next - x_mean) ** 2, 0.0))
                                                  ).reshape(populations, particles) / (2 * noise_stds[k] ** 2)
        log_weights = log_weights - torch.logsumexp(log_weights, 1, keepdim=True)
        resample = effective_sample_size(log_weights) < ess_threshold * particles
        ancestors = torch.where(resample[:, None], systematic_resampling(log_weights, generator),
                                torch.arange(particles, device=x.device))
        x_mean = _take(x_mean, ancestors)
        log_weights = torch.where(resample[:, None], -torch.log(log_weights.new_tensor(float(particles))),
                                  log_weights)
        y_t = y_next
        if k == steps - 1:
            break
        x = torch.where(mask, y_t, x_mean + noise_stds[k] * randn(x_mean.shape, generator, x_mean))
        if correct is not None:
            for _ in range(corrector_steps):
                x = torch.where(mask, y_t, unflat(correct(denoiser.score, flat(x), k, t_batch[k + 1], generator)[0]))
    if not denoise:
        x_mean = x_mean + noise_stds[-1] * randn(x_mean.shape, generator, x_mean)
    return torch.where(mask, observation, x_mean), log_weights
