"""Few-step samplers written in the SDE's marginal coefficients: DDIM, Heun (EDM) and
DPM-Solver++.

With p_t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) (alpha = m(t), sigma = s(t) of the SDE), each
step uses the denoiser's data prediction x0(x, t) = D(x, t) (`denoiser.Denoiser`) and needs only
(alpha, sigma) on its grid, so each runs unchanged on every process of the package.

Grid convention (shared with `pc`): the sampler evaluates the denoiser at the `steps` times
`timesteps` (T down to eps) and its last step goes from eps to the data itself
(alpha = 1, sigma = 0), where the update is x = x0(x, eps). So one evaluation per grid time for
DDIM and DPM-Solver++ (NFE = steps) and two for Heun but one for its last step (NFE = 2 steps - 1).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE, VPSDE
from ..utils import randn
from .registry import StepHook, register_sampler, run_hook


class _Grid(NamedTuple):
    """Per-step scalars, as Python floats, for the grid times plus the final data point."""
    times: List[float]       # t_0 = T > ... > t_{n-1} = eps (n = steps)
    alphas: List[float]      # alpha at t_0 .. t_{n-1}, then 1 (the data)
    sigmas: List[float]      # sigma at t_0 .. t_{n-1}, then 0
    half_log_snr: List[float]  # log(alpha / sigma) at t_0 .. t_{n-1}, then +inf


def _grid(sde: SDE, timesteps: torch.Tensor) -> _Grid:
    times = timesteps.to(torch.float64)
    alpha, sigma = sde.marginal_coefs(times)
    lam = torch.log(alpha) - torch.log(sigma)
    return _Grid(times.tolist(), alpha.tolist() + [1.0], sigma.tolist() + [0.0], lam.tolist() + [math.inf])


# On networks that predict the noise (DDPM's eps), the deterministic solvers follow the
# probability-flow ODE into speckled samples: the network's noise error at high noise levels,
# multiplied (sigma/alpha)^2-fold in its data prediction, leaks the starting noise into the data,
# and only fresh noise washes it out. So on that family ddim and dpm_solver++ run as their SDE
# variants unless the call sets eta, with the eta that scored best on the trained Fashion-MNIST
# model at 10 and 20 NFE (docs/benchmarks.md, "Speckles of noise-prediction models"). Networks
# that output the score (VE's NCSN++; x0 = x + sigma^2 score magnifies its error the same way)
# speckle too: on the trained VE digits model, eta 1 is the smallest eta that leaves no sample
# speckled at 10 and 20 NFE ("Defaults by family").

# -- DDIM ------------------------------------------------------------------------------------
# Defaults chosen on the trained digits model, where it and the exact mixture disagree (README,
# "Samplers"): DDIM's own quadratic grid; conditioned by a step hook (inpainting), eta = 1, whose
# fresh noise lets the replacement's mismatch wash out (docs/controllable.md). Networks with EDM's
# preconditioning, and score networks at their eta 1, step better on Karras' grid
# (docs/benchmarks.md, "Defaults by family").
@register_sampler("ddim", schedule="quadratic", deterministic=lambda options: options.get("eta", 0.0) == 0,
                  conditioned_options={"eta": 1.0}, family_options={"noise": {"eta": 1.0}, "score": {"eta": 1.0}},
                  family_grids={"edm": ("karras", {}), "score": ("karras", {})})
def ddim_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                 generator: Optional[torch.Generator] = None, *, eta: float = 0.0,
                 step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """DDIM (Song et al. 2021a, eq. 12) for any Gaussian kernel: from t to s,

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
        c = eta sigma_s sqrt(1 - exp(lambda_t - lambda_s)),

    where lambda is the log-SNR; c is the std of q(x_s | x_t, x_0) times eta, so eta = 0 is the
    deterministic DDIM (the first-order solver of the probability-flow ODE in lambda) and
    eta = 1 samples the exact posterior like DDPM's ancestral step."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    grid = _grid(sde, timesteps)
    n = len(grid.times)
    x = run_hook(step_hook, x, grid.times[0])
    for k in range(n):
        alpha_t, sigma_t = grid.alphas[k], grid.sigmas[k]
        x0 = denoiser(x, grid.times[k])
        if k == n - 1:
            return x0
        alpha_s, sigma_s = grid.alphas[k + 1], grid.sigmas[k + 1]
        log_snr_gap = 2 * (grid.half_log_snr[k] - grid.half_log_snr[k + 1])  # lambda_t - lambda_s <= 0
        noise_std = eta * sigma_s * math.sqrt(-math.expm1(log_snr_gap))
        noise_std = min(noise_std, sigma_s)  # eta > 1 cannot take more noise than sigma_s holds
        eps = (x - alpha_t * x0) / sigma_t
        x = alpha_s * x0 + math.sqrt(sigma_s ** 2 - noise_std ** 2) * eps
        if noise_std > 0:
            x = x + noise_std * randn(x.shape, generator, x)
        x = run_hook(step_hook, x, grid.times[k + 1], x0)
    return x


# -- Heun, Karras et al. 2022 ----------------------------------------------------------------
# Karras et al.'s own grid (rho = 7); one evaluation per step plus one per step but the last.
@register_sampler("heun", schedule="karras", deterministic=lambda options: options.get("churn", 0.0) == 0,
                  score_calls=lambda steps, options: 2 * steps - 1)
def heun_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                 generator: Optional[torch.Generator] = None, *, churn: float = 0.0,
                 churn_min: float = 0.0, churn_max: float = math.inf,
                 churn_noise: float = 1.0, step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Heun's 2nd-order method with optional stochastic churn (Karras et al. 2022, Algorithm 2).

    It works on y = x / alpha_t, whose noise level is sigma~ = sigma_t / alpha_t: the
    probability-flow ODE becomes dy/dsigma~ = (y - x0(y)) / sigma~ (their eq. 3 with s = 1).
    churn (S_churn) adds noise to raise sigma~ by gamma = min(churn / steps, sqrt(2) - 1) at
    grid levels within [churn_min, churn_max] (S_tmin, S_tmax) before each step; churn_noise is
    S_noise. The last step, to sigma~ = 0, is an Euler step (their Algorithm 2, line 9). One
    difference to EDM's `edm_sampler`: a churned level is capped at the grid's top (EDM's may
    exceed its sigma_max, where churn_max >= the top level; its published settings churn below
    50)."""
    grid = _grid(sde, timesteps)
    n = len(grid.times)
    noise_levels = [s / a for a, s in zip(grid.alphas, grid.sigmas)]  # sigma~, ends with 0
    gamma_max = min(churn / n, math.sqrt(2) - 1) if churn > 0 else 0.0
    top_level = noise_levels[0]

    def denoise(y: torch.Tensor, level: float) -> torch.Tensor:
        # D at the time whose noise level is `level`; the network sees x = alpha y.
        t = grid.times[0] if level >= top_level else float(sde.time_of_log_snr(
            torch.tensor(-2 * math.log(level), dtype=torch.float64)))
        return denoiser(sde.marginal_coefs(torch.tensor(t, dtype=torch.float64))[0].item() * y, t)

    y = run_hook(step_hook, x, grid.times[0]) / grid.alphas[0]
    for k in range(n):
        level, next_level = noise_levels[k], noise_levels[k + 1]
        gamma = gamma_max if churn_min <= level <= churn_max else 0.0
        # with churn on, a draw at every step, used or not, as EDM's edm_sampler draws: the same
        # generator gives its noise
        noise = randn(y.shape, generator, y) if gamma_max > 0 else None
        if gamma > 0:  # churn: go up to level_hat by adding fresh noise
            level_hat = min(level * (1 + gamma), top_level)
            extra = math.sqrt(max(level_hat ** 2 - level ** 2, 0.0)) * churn_noise
            y = y + extra * noise
            level = level_hat
            x0 = denoise(y, level)
        else:
            x0 = denoiser(grid.alphas[k] * y, grid.times[k])
        slope = (y - x0) / level
        y_next = y + (next_level - level) * slope
        if next_level > 0:  # 2nd-order correction with the slope at the end of the step
            x0_next = denoiser(grid.alphas[k + 1] * y_next, grid.times[k + 1])
            slope_next = (y_next - x0_next) / next_level
            y_next = y + (next_level - level) * 0.5 * (slope + slope_next)
            # The hook sees x = alpha y at the step's end, and y goes on from what it returns.
            y_next = run_hook(step_hook, grid.alphas[k + 1] * y_next, grid.times[k + 1], x0) / grid.alphas[k + 1]
        y = y_next
    return y  # alpha = 1 at the data


# -- DPM-Solver++ ----------------------------------------------------------------------------
# The log-SNR grid warped towards high SNR: the best 2nd-order grid on the trained digits model,
# preferred where the exact mixture favours another warp (README, "Samplers"). Networks
# predicting the noise or the velocity step better on Karras' grid at 10-20 NFE on Fashion-MNIST
# (docs/benchmarks.md, "Defaults by family"); EDM networks on the grid uniform in log-SNR, the
# measured grid whose worst case over the digits and Fashion-MNIST EDM models is smallest
# (Karras' grid is best on one and far off on the other). UniPC's corrector keeps its grid.
# Velocity networks run as UniPC (order 3 with the corrector) unless the call sets the order or
# an eta: between the digits and Fashion-MNIST flow models no grid for 2M came within 5% of the
# best on both, and UniPC did.
@register_sampler("dpm_solver++", schedule="logsnr", schedule_options={"power": 0.65}, end_noise_level=float(VPSDE().noise_level(5e-4)),
                  deterministic=lambda options: options.get("eta", 0.0) == 0,
                  conditioned_options={"eta": 1.0},  # conditioned: its SDE variant, as ddim's
                  family_options={"noise": {"eta": 0.5}, "score": {"eta": 1.0}, "velocity": {"order": 3, "unipc": True}},
                  family_grids={"edm": ("logsnr", {"power": 1.0}), "noise": ("karras", {}), "velocity": ("karras", {})},
                  overridden_by={"eta": ("unipc",), "schedule": ("unipc",), "unipc": ("eta", "order"), "order": ("eta",)},
                  option_choices={"order": (1, 2, 3)})
def dpm_solver_pp_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                          generator: Optional[torch.Generator] = None, *, order: int = 2,
                          eta: float = 0.0, unipc: bool = False,
                          step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Multistep DPM-Solver++ in the data prediction (Lu et al. 2022b), orders 1 to 3; eta > 0 is
    its SDE variant (eta = 1: DPM-Solver++(2M) SDE, their eq. for the SDE solver).

    With half log-SNR l = log(alpha / sigma) and h = l_s - l_t, the first-order step is

        x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s (1 - e^(-(1 + eta) h)) x0_t
              + sigma_s sqrt(1 - e^(-2 eta h)) z,

    (DDIM for eta = 0), and orders 2 and 3 add finite differences of the previous x0 along l
    (the multistep corrections of Lu et al. 2022b, Algorithm 2, and the 3rd-order phi terms).
    The first steps use the orders their history allows; the last step returns x0(x, eps).

    unipc (eta = 0 only): once x0 has been evaluated at the new point x_s, x_s is recomputed
    from x_t with x0 interpolated through that new value as well (UniPC's corrector, Zhao et al.
    2023, in the form of an exponential Adams-Moulton step through at most three x0), which
    raises orders 1 and 2 by one and gives order 3 its full order (its first-order start
    otherwise limits it to 2), at no extra NFE; the new x0, evaluated before the correction, is
    reused by the next step."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if unipc and eta > 0:
        raise ValueError("the unipc corrector is for the deterministic solver (eta = 0)")
    grid = _grid(sde, timesteps)
    n = len(grid.times)
    lam = grid.half_log_snr
    history: List[torch.Tensor] = []  # x0 at the latest grid times, newest last
    x_previous = x = run_hook(step_hook, x, grid.times[0])
    for k in range(n):
        x0 = denoiser(x, grid.times[k])
        if k == n - 1:
            return x0
        if unipc and history:
            # UniPC's corrector interpolates through at most three x0: the new one and the last two.
            x = _corrected(x_previous, x0, history[-2:], lam, grid, k)
            if step_hook is not None:  # the corrector recomputed x: the hook acts on it again
                x = run_hook(step_hook, x, grid.times[k], x0)
        x_previous = x
        history = (history + [x0])[-max(order, 2 if unipc else 1):]
        x0_steps = history[-order:]
        h = lam[k + 1] - lam[k]
        h_eta = h * (1 + eta)
        alpha_s, sigma_s = grid.alphas[k + 1], grid.sigmas[k + 1]
        x = (sigma_s / grid.sigmas[k]) * math.exp(-eta * h) * x + alpha_s * -math.expm1(-h_eta) * x0
        if len(x0_steps) == 2:
            r = (lam[k] - lam[k - 1]) / h
            x = x + alpha_s * -math.expm1(-h_eta) / (2 * r) * (x0 - x0_steps[-2])
        elif len(x0_steps) == 3:
            r0, r1 = (lam[k] - lam[k - 1]) / h, (lam[k - 1] - lam[k - 2]) / h
            d1_0, d1_1 = (x0 - x0_steps[-2]) / r0, (x0_steps[-2] - x0_steps[-3]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            phi_3 = phi_2 / h_eta - 0.5
            x = x + alpha_s * (phi_2 * d1 - phi_3 * d2)
        if eta > 0:
            x = x + sigma_s * math.sqrt(-math.expm1(-2 * eta * h)) * randn(x.shape, generator, x)
        x = run_hook(step_hook, x, grid.times[k + 1], x0)
    return x


def _corrected(x_previous: torch.Tensor, x0_new: torch.Tensor, history: List[torch.Tensor], lam, grid: _Grid,
               k: int) -> torch.Tensor:
    """x_k again from x_{k-1}, with x0 along l taken as the polynomial through x0_k (new) and the
    x0 before it: x_k = (sigma_k / sigma_{k-1}) x_{k-1} + sigma_k int e^l x0(l) dl over
    [l_{k-1}, l_k]. The integral is a quadrature sum_j w_j x0_j whose weights integrate
    e^(u - h) u^i exactly for i below the number of points (u = l - l_{k-1})."""
    h = lam[k] - lam[k - 1]
    nodes = [lam[k - 1 - j] - lam[k - 1] for j in range(len(history))][::-1] + [h]
    values = history + [x0_new]
    moments = [-math.expm1(-h)]  # int_0^h e^(u - h) u^i du = h^i - i m_(i-1), by parts
    for i in range(1, len(nodes)):
        moments.append(h ** i - i * moments[-1])
    powers = torch.tensor([[u ** i for u in nodes] for i in range(len(nodes))], dtype=torch.float64)
    weights = torch.linalg.solve(powers, torch.tensor(moments, dtype=torch.float64)).tolist()
    integral = sum(w * v for w, v in zip(weights, values))
    return grid.sigmas[k] / grid.sigmas[k - 1] * x_previous + grid.alphas[k] * integral
