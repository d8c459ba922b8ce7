"""Predictor-corrector sampling (Song et al. 2021, sec. 4.2 and Algorithms 1-5).

A predictor takes one step of a discretized reverse SDE. Every predictor here is affine in x
and the score, x_mean = a_k x + b_k score(x, s_k), x = x_mean + c_k z, with coefficients that
depend only on the grid, so a predictor is a function `(sde, t, t_next, index) -> AffineStep`
of (a, b, c, s) over the whole grid, evaluated once before the loop. Continuous-time
predictors evaluate the score on the grid (s_k = t_k); those that take the SDE's chain steps
evaluate it at the chain's own times (s_k = sde.chain.time(i)), so their grid is the chain's.
Register new ones with `@register_predictor("name")`; return None to take no predictor step.

A corrector runs a few steps of score-based MCMC at a fixed time. It is a function
`(sde, t, index, snr, corrector_steps) -> step` whose `step(score_fn, x, k, t_k, generator)`
returns (x, x_mean) after its MCMC steps at grid point k; register with
`@register_corrector("name")`; return None for no corrector.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..utils import Registry, randn
from .registry import StepHook, register_sampler, run_hook

PREDICTORS: Registry = Registry("predictor")
CORRECTORS: Registry = Registry("corrector")
register_predictor = PREDICTORS.register
register_corrector = CORRECTORS.register


class AffineStep(NamedTuple):
    """Per-grid-point coefficients of x_mean = x_coef x + score_coef score(x, score_time);
    x = x_mean + noise_std z."""
    x_coef: torch.Tensor
    score_coef: torch.Tensor
    noise_std: torch.Tensor
    score_time: torch.Tensor


# -- predictors ------------------------------------------------------------------------------
@register_predictor("euler_maruyama")
def euler_maruyama(sde: SDE, t, t_next, index) -> AffineStep:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6) from t to t_next < t:
    x + [f(t) x - g(t)^2 score] dt + g(t) sqrt(-dt) z with dt = t_next - t."""
    dt = t_next - t
    g2 = sde.diffusion(t) ** 2
    return AffineStep(1 + sde.drift_coef(t) * dt, -g2 * dt, torch.sqrt(g2 * -dt), t)


@register_predictor("reverse_diffusion")
def reverse_diffusion(sde: SDE, t, t_next, index) -> AffineStep:
    """The reverse of the forward chain x_{i+1} = x_i + f_i x_i + G_i z (Song et al. 2021,
    eq. 46): x_i = x_{i+1} - f_i x_{i+1} + G_i^2 score + G_i z."""
    f_coef, G = sde.chain.coefs(index)
    return AffineStep(1 - f_coef, G ** 2, G, sde.chain.time(index))


@register_predictor("ancestral")
def ancestral(sde: SDE, t, t_next, index) -> AffineStep:
    """Ancestral sampling of the chain: DDPM's for VP, SMLD's for VE (Song et al. 2021, eq. 47)."""
    return AffineStep(*sde.chain.ancestral_coefs(index), sde.chain.time(index))


@register_predictor("none")
def no_predictor(sde: SDE, t, t_next, index) -> None:
    return None


# -- correctors ------------------------------------------------------------------------------
def _langevin_loop(step_size_fn: Callable, corrector_steps: int):
    """Langevin MCMC x <- x + e score + sqrt(2 e) z, with the step size e = step_size_fn(...)
    a scalar (a float or a 0-d tensor) shared by the batch."""
    def step(score_fn, x, k, t_k, generator):
        x_mean = x
        for _ in range(corrector_steps):
            score = score_fn(x, t_k)
            noise = randn(x.shape, generator, x)
            step_size = step_size_fn(k, score, noise)
            x_mean = x + step_size * score
            x = x_mean + (2 * step_size) ** 0.5 * noise
        return x, x_mean
    return step


def _batch_norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


@register_corrector("langevin")
def langevin(sde: SDE, t, index, snr: float, corrector_steps: int):
    """Langevin corrector (Song et al. 2021, Algorithm 5 for VP, 4 for VE): the step size
    2 alpha_i (snr ||z|| / ||score||)^2 keeps the signal-to-noise ratio at `snr`. The norms are
    averaged over the batch, as in the reference code: a per-sample ratio explodes wherever a
    sample's score nearly vanishes, which happens at the modes of low-dimensional data."""
    alphas = sde.chain.langevin_alpha(index).tolist()

    def step_size(k, score, noise):
        ratio = snr * _batch_norm(noise).mean() / _batch_norm(score).mean().clamp_min(1e-30)
        return 2 * alphas[k] * ratio ** 2
    return _langevin_loop(step_size, corrector_steps)


@register_corrector("ald")
def annealed_langevin(sde: SDE, t, index, snr: float, corrector_steps: int):
    """Annealed Langevin dynamics (Song & Ermon 2019): step size 2 alpha_i (snr s(t))^2 set by
    the noise level s(t) rather than by the score's norm."""
    alphas = sde.chain.langevin_alpha(index)
    step_sizes = (2 * alphas * (snr * sde.marginal_coefs(t)[1]) ** 2).tolist()

    def step_size(k, score, noise):
        return step_sizes[k]
    return _langevin_loop(step_size, corrector_steps)


@register_corrector("none")
def no_corrector(sde: SDE, t, index, snr: float, corrector_steps: int):
    return None


# -- the sampler -----------------------------------------------------------------------------
class PredictorPlan(NamedTuple):
    """A predictor laid out over a grid of `steps` times, before the loop: the SDE with its
    chain respaced to the grid, the chain index of each step, the step coefficients as Python
    floats (None for no predictor) and the times the score is evaluated at."""
    sde: SDE
    index: torch.Tensor
    x_coefs: Optional[list]
    score_coefs: Optional[list]
    noise_stds: Optional[list]
    score_times: torch.Tensor


def plan_predictor(sde: SDE, timesteps: torch.Tensor, predictor: str) -> PredictorPlan:
    """The set-up `pc_sampler` and the SMC sampler share (step k goes from timesteps[k] to the
    next time, the last one to t = 0)."""
    steps = len(timesteps)
    sde = sde.with_steps(steps)
    t_next = torch.cat([timesteps[1:], timesteps.new_zeros(1)])
    index = torch.arange(steps - 1, -1, -1, device=timesteps.device)
    predict = PREDICTORS.get_or_raise(predictor)(sde, timesteps, t_next, index)
    if predict is None:
        return PredictorPlan(sde, index, None, None, None, timesteps)
    x_coefs, score_coefs, noise_stds = (c.tolist() for c in predict[:3])
    return PredictorPlan(sde, index, x_coefs, score_coefs, noise_stds, predict.score_time.to(timesteps))


def _pc_score_calls(steps: int, options) -> int:
    """One score evaluation per predictor step, corrector_steps per corrector visit; the corrector
    visits every grid point but the first (Algorithm 1), or every one (corrector_first)."""
    predictor = options.get("predictor", "reverse_diffusion") != "none"
    corrector = options.get("corrector_steps", 1) if options.get("corrector", "langevin") != "none" else 0
    return predictor * steps + corrector * (steps if options.get("corrector_first", False) else steps - 1)


@register_sampler("pc", score_calls=_pc_score_calls)
def pc_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
               generator: Optional[torch.Generator] = None, *, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
               corrector_first: bool = False, denoise: bool = True,
               step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Predictor-corrector sampling along `timesteps` (Song et al. 2021, Algorithm 1).

    At each grid point t_k the predictor steps from t_k toward t_{k+1} (the last step goes
    to t = 0) and the corrector then refines the result at t_{k+1}, as in Algorithm 1 (not
    after the last step: the score at t = 0 is that of the data, singular for images).
    `corrector_first=True` runs the corrector at t_k before the predictor instead, the order
    of the reference code: it corrects the prior sample and leaves the final sample
    uncorrected. Chain-based predictors (reverse_diffusion, ancestral) take step
    len(timesteps) - 1 - k of the SDE's chain respaced to len(timesteps) steps, and their grid
    is the chain's times (sde.chain.time) rather than `timesteps`, whose eps they ignore.
    `denoise` returns the last noise-free mean instead of adding the last step's noise.
    `step_hook` (`registry.StepHook`) acts on the start and after the predictor and after every
    single corrector MCMC step, with t the time x is at (the next step's score time) and no
    data prediction (PC's steps use the score).
    """
    steps = len(timesteps)
    # Schedules are data: Python floats and per-step time vectors, made before the loop.
    sde, index, x_coefs, score_coefs, noise_stds, timesteps = plan_predictor(sde, timesteps, predictor)
    predicts = x_coefs is not None
    make_corrector = CORRECTORS.get_or_raise(corrector)
    # A hook acts after each MCMC step: the corrector is then built for one step and called
    # corrector_steps times, which is the same chain.
    mcmc_steps, repeats = (1, corrector_steps) if step_hook is not None else (corrector_steps, 1)
    if corrector_first:
        correct = make_corrector(sde, timesteps, index, snr, mcmc_steps)
    else:  # the corrector acts after step k, at the next grid point
        correct = make_corrector(sde, timesteps[1:], index[1:], snr, mcmc_steps)
    t_batch = timesteps.to(x.dtype)[:, None].expand(steps, x.shape[0])

    def correct_at(x, k, t):
        for _ in range(repeats):
            x, x_mean = correct(denoiser.score, x, k, t, generator)
            x = run_hook(step_hook, x, t)
        return x, x_mean

    x_mean = x = run_hook(step_hook, x, t_batch[0])
    for k in range(steps):
        if correct is not None and corrector_first:
            x, x_mean = correct_at(x, k, t_batch[k])
        if predicts:
            x_mean = torch.add(x * x_coefs[k], denoiser.score(x, t_batch[k]), alpha=score_coefs[k])
            x = x_mean + randn(x.shape, generator, x) * noise_stds[k] if noise_stds[k] else x_mean
        if k == steps - 1:
            break  # at t = 0: no hook (the caller has the result) and no corrector
        x = run_hook(step_hook, x, t_batch[k + 1])
        if correct is not None and not corrector_first:
            x, x_mean = correct_at(x, k, t_batch[k + 1])
    return x_mean if denoise else x
