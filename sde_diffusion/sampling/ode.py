"""The probability-flow ODE dx/dt = f(t) x - g(t)^2 score(x, t) / 2 (Song et al. 2021, eq. 13),
solved with scipy's `solve_ivp`. It maps data to latents (`encode`) and back (`decode`)
deterministically, and is the basis of the likelihood in `sde_diffusion.likelihood`."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ..sdes import SDE, ScoreFn
from ..utils import append_dims
from .registry import CountingScore, register_sampler


def probability_flow_drift(score_fn: ScoreFn, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """drift(x, t) of the probability-flow ODE (Song et al. 2021, eq. 13)."""
    flow = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: flow.sde(x, t)[0]


def solve_ivp_torch(fun: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor,
                    t_start: float, t_end: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                    solver: str = "RK45") -> torch.Tensor:
    """Integrate dy/dt = fun(y, t) for a batch y0 [B, ...] from t_start to t_end with scipy.

    scipy works on one flat float64 vector; `fun` sees tensors of y0's shape, dtype and device,
    and t as a [B] tensor. Raises RuntimeError when the solver fails.
    """
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    batch = shape[0]

    def numpy_fun(t: float, y: np.ndarray) -> np.ndarray:
        y_torch = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        t_torch = torch.full((batch,), t, device=device, dtype=dtype)
        with torch.no_grad():
            return fun(y_torch, t_torch).reshape(-1).to("cpu", torch.float64).numpy()

    y0_flat = y0.detach().reshape(-1).to("cpu", torch.float64).numpy()
    solution = solve_ivp(numpy_fun, (float(t_start), float(t_end)), y0_flat,
                         rtol=rtol, atol=atol, method=solver)
    if not solution.success:
        raise RuntimeError(f"ODE solver {solver} failed: {solution.message}")
    return torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)


def solve_probability_flow(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t_start: float,
                           t_end: float, **solver_options) -> Tuple[torch.Tensor, int]:
    """Carry x from time t_start to t_end along the probability-flow ODE; returns (x, nfe)."""
    counted = CountingScore(score_fn)
    x_end = solve_ivp_torch(probability_flow_drift(counted, sde), x, t_start, t_end, **solver_options)
    return x_end, counted.calls


def encode(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, eps: float = 1e-3,
           **solver_options) -> Tuple[torch.Tensor, int]:
    """Data x (at time eps) to its latent z at time T; returns (z, nfe)."""
    return solve_probability_flow(score_fn, sde, x, eps, sde.T, **solver_options)


def decode(score_fn: ScoreFn, sde: SDE, z: torch.Tensor, eps: float = 1e-3,
           **solver_options) -> Tuple[torch.Tensor, int]:
    """A latent z at time T to data at time eps; returns (x, nfe)."""
    return solve_probability_flow(score_fn, sde, z, sde.T, eps, **solver_options)


def tweedie_denoise(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + s(t)^2 score(x_t, t)) / m(t) (Tweedie's formula): one evaluation
    that removes the noise still present at the last time of the grid."""
    mean_coef, std = sde.marginal_coefs(t)
    score = score_fn(x, t)
    return (x + append_dims(std ** 2, x.ndim) * score) / append_dims(mean_coef, x.ndim)


@register_sampler("ode")
def ode_sampler(score_fn, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                generator: Optional[torch.Generator] = None, *, rtol: float = 1e-5,
                atol: float = 1e-5, solver: str = "RK45", denoise: bool = False) -> torch.Tensor:
    """Solve the probability-flow ODE from timesteps[0] to timesteps[-1] with scipy's adaptive
    `solver` (solve_ivp's method: RK45, DOP853, Radau, ...); only the grid's ends matter.
    Deterministic: the generator only draws the prior. `denoise` applies Tweedie's formula at
    the end (+1 NFE)."""
    t_end = float(timesteps[-1])
    x, _ = solve_probability_flow(score_fn, sde, x, float(timesteps[0]), t_end,
                                  rtol=rtol, atol=atol, solver=solver)
    if denoise:
        x = tweedie_denoise(score_fn, sde, x, torch.full((x.shape[0],), t_end, dtype=x.dtype, device=x.device))
    return x
