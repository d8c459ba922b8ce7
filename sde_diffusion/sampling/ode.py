"""The probability-flow ODE dx/dt = f(t) x - g(t)^2 score(x, t) / 2 (Song et al. 2021, eq. 13),
solved by an adaptive Runge-Kutta method from scipy's `solve_ivp` or from torchdiffeq. It maps
data to latents (`encode`) and back (`decode`) deterministically, and is the basis of the
likelihood in `sde_diffusion.evaluation.likelihood`.

scipy works on one float64 vector on the host, so every evaluation copies the batch there and
back; torchdiffeq steps in torch on the tensors' own device and dtype, which is what a GPU
wants. Both control the error to rtol/atol in an RMS norm over the whole batch.

A tolerance finer than the score's own accuracy (say 1e-14) makes the solvers take ever smaller
steps; rather than run for hours, a solve stops with `SolverStopped` (one line: where, after how
many evaluations, what to loosen) when it passes `max_nfe` score evaluations, when the step
falls below what floating point resolves, or when the drift is not finite, and it logs where it
is every `PROGRESS_SECONDS` meanwhile."""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

from ..processes.denoiser import CountedDenoiser, Denoiser, as_denoiser
from ..processes.sdes import SDE
from .spec import Model
from .registry import SAMPLER_TRAITS, register_sampler


MAX_NFE = 20_000  # the default cap: about 100 times a solve at the default tolerances
PROGRESS_SECONDS = 30.0
log = logging.getLogger(__name__)


class SolverStopped(RuntimeError):
    """An adaptive solver gave up (module docstring); its text is one line."""


class SolveWatch:
    """Counts the evaluations of a solve, stops it past `max_nfe` or at a non-finite value, and
    logs where it is every PROGRESS_SECONDS."""

    def __init__(self, what: str, t_start: float, t_end: float, max_nfe: Optional[int], settings: str):
        self.what, self.span, self.max_nfe, self.settings = what, f"{t_start:g} -> {t_end:g}", max_nfe, settings
        self.calls, self.t, self.last_log = 0, t_start, time.perf_counter()

    def where(self) -> float:
        # a time tensor (torchdiffeq's, adaptive_sde's per sample) is read only here: the slowest sample's
        return float(self.t.max()) if isinstance(self.t, torch.Tensor) else float(self.t)

    def stopped(self, why: str, advice: str) -> SolverStopped:
        return SolverStopped(f"{self.what} stopped at t = {self.where():.6g} (of {self.span}) after {self.calls} "
                             f"score evaluations: {why} ({self.settings}); {advice}")

    def __call__(self, t, calls: int = 1) -> None:
        """`calls` more evaluations, now at time `t` (a float or a tensor)."""
        self.calls, self.t = self.calls + calls, t
        if self.max_nfe is not None and self.calls > self.max_nfe:
            self.calls -= calls
            raise self.stopped(f"max_nfe={self.max_nfe} reached", "loosen rtol/atol or raise max_nfe")
        now = time.perf_counter()
        if now - self.last_log >= PROGRESS_SECONDS:
            self.last_log = now
            log.info("%s: t = %.6g (of %s), %d score evaluations%s", self.what, self.where(), self.span, self.calls,
                     f" of at most {self.max_nfe}" if self.max_nfe is not None else "")

    def check_finite(self, finite: bool) -> None:
        if not finite:
            raise self.stopped("the drift is non-finite (NaN or infinite) there",
                               "the score diverges (a huge guidance scale, a damaged model?)")


def probability_flow_drift(model: Model, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """drift(x, t) of the probability-flow ODE (Song et al. 2021, eq. 13) of a Denoiser (its
    score by Tweedie's formula) or a score function."""
    flow = sde.reverse(as_denoiser(model, sde).score, probability_flow=True)
    return lambda x, t: flow.sde(x, t)[0]


# solve_ivp's methods, and torchdiffeq's adaptive ones (its fixed-step methods would need a
# step size, which this interface does not take).
SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
TORCHDIFFEQ_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def check_solver(solver: str) -> str:
    """Return `solver` if either family knows it; otherwise a ValueError that lists both."""
    if solver not in SCIPY_SOLVERS and solver not in TORCHDIFFEQ_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; known: scipy {', '.join(SCIPY_SOLVERS)}; "
                         f"torchdiffeq {', '.join(TORCHDIFFEQ_SOLVERS)}")
    return solver


def solve_ivp_torch(fun: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor,
                    t_start: float, t_end: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                    solver: str = "RK45", max_nfe: Optional[int] = None, what: str = "ODE solve") -> torch.Tensor:
    """Integrate dy/dt = fun(y, t) for a batch y0 [B, ...] from t_start to t_end.

    solver: one of SCIPY_SOLVERS (scipy's solve_ivp) or TORCHDIFFEQ_SOLVERS (torchdiffeq's
    odeint). `fun` sees tensors of y0's shape, dtype and device, and t as a [B] tensor; it runs
    without autograd (enable it inside `fun` where a derivative is needed). Raises SolverStopped
    (named `what` in its text) past `max_nfe` evaluations of `fun` (None: no cap), at a step
    below floating-point resolution or a non-finite value of `fun`.
    """
    watch = SolveWatch(f"{what} ({solver})", float(t_start), float(t_end), max_nfe, f"rtol={rtol:g}, atol={atol:g}")
    if check_solver(solver) in TORCHDIFFEQ_SOLVERS:
        return _solve_torchdiffeq(fun, y0, t_start, t_end, rtol, atol, solver, watch)
    return _solve_scipy(fun, y0, t_start, t_end, rtol, atol, solver, watch)


def _solve_scipy(fun, y0: torch.Tensor, t_start: float, t_end: float, rtol: float, atol: float,
                 solver: str, watch: SolveWatch) -> torch.Tensor:
    # scipy works on one flat float64 vector; convert at each evaluation.
    shape, dtype, device = y0.shape, y0.dtype, y0.device
    batch = shape[0]

    def numpy_fun(t: float, y: np.ndarray) -> np.ndarray:
        watch(t)
        y_torch = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        t_torch = torch.full((batch,), t, device=device, dtype=dtype)
        with torch.no_grad():
            value = fun(y_torch, t_torch).reshape(-1).to("cpu", torch.float64).numpy()
        watch.check_finite(bool(np.isfinite(value).all()))  # on the host already: no extra sync
        return value

    y0_flat = y0.detach().reshape(-1).to("cpu", torch.float64).numpy()
    with warnings.catch_warnings():  # rtol below 100 machine epsilons is raised by scipy, and said so
        warnings.filterwarnings("ignore", message=".*rtol.*too small")
        solution = solve_ivp(numpy_fun, (float(t_start), float(t_end)), y0_flat,
                             rtol=rtol, atol=atol, method=solver)
    if not solution.success:
        raise watch.stopped(f"scipy: {solution.message.rstrip('.')}",
                            "loosen rtol/atol, or check the score (a huge guidance scale, a damaged model?)")
    return torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)


def _solve_torchdiffeq(fun, y0: torch.Tensor, t_start: float, t_end: float, rtol: float,
                       atol: float, solver: str, watch: SolveWatch) -> torch.Tensor:
    batch = y0.shape[0]

    def torch_fun(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        watch(t)  # a tensor: read only to log or stop, no host sync per evaluation
        # torchdiffeq keeps its times in float64 whatever y's dtype; fun gets y's.
        return fun(y, t.to(y.dtype).expand(batch))

    span = torch.tensor([float(t_start), float(t_end)], dtype=y0.dtype, device=y0.device)
    # torchdiffeq steps past the end and interpolates back, which would evaluate the score
    # beyond eps (at t < 0 the VP std is NaN); step_t makes its last step land on t_end.
    options = {"step_t": span[1:]}
    try:
        with torch.no_grad():
            path = torchdiffeq.odeint(torch_fun, y0.detach(), span, rtol=rtol, atol=atol,
                                      method=solver, options=options)
    except AssertionError as error:  # its failures: step-size underflow, non-finite state
        first_line = (str(error).strip().splitlines() or ["failed"])[0]
        raise watch.stopped(f"torchdiffeq: {first_line}",
                            "loosen rtol/atol, or check the score (a huge guidance scale, a damaged model?)") from error
    return path[-1]


def solve_probability_flow(model: Model, sde: SDE, x: torch.Tensor, t_start: float,
                           t_end: float, **solver_options) -> Tuple[torch.Tensor, int]:
    """Carry x from time t_start to t_end along the probability-flow ODE; returns (x, nfe)."""
    counted = CountedDenoiser(as_denoiser(model, sde))
    x_end = solve_ivp_torch(probability_flow_drift(counted, sde), x, t_start, t_end, **solver_options)
    return x_end, counted.calls


def _ode_end(sde: SDE) -> float:
    """Where the `ode` sampler's default grid ends on `sde`: encode and decode meet it there."""
    return sde.time_of_noise_level(SAMPLER_TRAITS["ode"].end_noise_level)


def encode(model: Model, sde: SDE, x: torch.Tensor, eps: Optional[float] = None,
           **solver_options) -> Tuple[torch.Tensor, int]:
    """Data x (at time eps; unset: the `ode` sampler's default end) to its latent z at time T;
    returns (z, nfe)."""
    return solve_probability_flow(model, sde, x, _ode_end(sde) if eps is None else eps, sde.T, **solver_options)


def decode(model: Model, sde: SDE, z: torch.Tensor, eps: Optional[float] = None,
           **solver_options) -> Tuple[torch.Tensor, int]:
    """A latent z at time T to data at time eps (unset: the `ode` sampler's default end);
    returns (x, nfe)."""
    return solve_probability_flow(model, sde, z, sde.T, _ode_end(sde) if eps is None else eps, **solver_options)


@register_sampler("ode", adaptive=lambda options: True, deterministic=lambda options: True)
def ode_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                generator: Optional[torch.Generator] = None, *, rtol: float = 1e-5,
                atol: float = 1e-5, solver: str = "RK45", denoise: bool = False,
                max_nfe: int = MAX_NFE) -> torch.Tensor:
    """Solve the probability-flow ODE from timesteps[0] to timesteps[-1] with an adaptive
    `solver` to rtol/atol: scipy's (RK45, DOP853, Radau, ...) or torchdiffeq's (dopri5, dopri8,
    bosh3, ...), which stays on x's device; only the grid's ends matter. Deterministic: the
    generator only draws the prior. `denoise` returns D(x, eps) at the end (+1 NFE), removing the
    noise still present at the grid's last time.
    SolverStopped past `max_nfe` score evaluations (module docstring)."""
    t_end = float(timesteps[-1])
    x, _ = solve_probability_flow(denoiser, sde, x, float(timesteps[0]), t_end, rtol=rtol, atol=atol,
                                  solver=solver, max_nfe=max_nfe, what="ode sampler")
    if denoise:
        x = denoiser(x, t_end)
    return x
