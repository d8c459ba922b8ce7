"""The reverse SDE integrated by torchsde's solvers (Euler, Milstein, SRK; fixed or adaptive dt).

torchsde integrates forward in time, so we solve for y(tau) = x(T - tau), which obeys
dy = [-f(T - tau) y + g(T - tau)^2 score(y, T - tau)] dtau + g(T - tau) dW_tau
(Song et al. 2021, eq. 6 with time reversed), an Ito SDE with diagonal, state-independent noise.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torchsde

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from .registry import StepHook, register_sampler, run_hook


class _ReverseTimeSDE(torch.nn.Module):
    """The reverse SDE in torchsde's interface: f(tau, y) and g(tau, y) on flat states [B, D]."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, denoiser: Denoiser, sde: SDE, shape, t_start: float):
        super().__init__()
        self.reverse_sde, self.forward_sde = sde.reverse(denoiser.score), sde
        self.shape, self.t_start = shape, t_start
        self.repeat_last, self.last = False, None

    def _time(self, tau, y):
        return (self.t_start - tau).expand(y.shape[0]).to(y.dtype)

    def f(self, tau, y):
        # torchsde evaluates f once at the start of every sdeint call to check shapes, then again
        # at the same (tau, y) for the first step: with one call per grid interval (a step hook)
        # that would double the score evaluations, so a repeat of the last call is answered from it.
        if self.repeat_last and self.last is not None and self.last[0] is y and float(self.last[1]) == float(tau):
            return self.last[2]
        # d/dtau of x(T - tau) is minus the reverse drift at t = T - tau.
        drift, _ = self.reverse_sde.sde(y.reshape(self.shape), self._time(tau, y))
        self.last = (y, tau, -drift.reshape(y.shape))
        return self.last[2]

    def g(self, tau, y):
        # y * 0 keeps g connected to y, as Milstein's derivative of g with respect to y requires.
        return y * 0 + self.forward_sde.diffusion(self._time(tau, y))[:, None]


@register_sampler("sde_solver", adaptive=lambda options: bool(options.get("adaptive", False)))
def torchsde_sampler(denoiser: Denoiser, sde: SDE, x: torch.Tensor, timesteps: torch.Tensor,
                     generator: Optional[torch.Generator] = None, *, solver: str = "euler",
                     dt: Optional[float] = None, adaptive: bool = False, rtol: float = 1e-3,
                     atol: float = 1e-3, dt_min: float = 1e-5,
                     step_hook: Optional[StepHook] = None) -> torch.Tensor:
    """Integrate the reverse SDE from timesteps[0] to timesteps[-1] with torchsde.sdeint.

    solver: "euler", "milstein" or "srk"; dt: the (initial) step, by default the grid's
    (timesteps[0] - timesteps[-1]) / (len(timesteps) - 1); adaptive: step-size control to
    rtol/atol (torchsde's, by step doubling). The Brownian path is seeded from `generator`.
    With a `step_hook` the solver runs grid interval by grid interval on the same Brownian
    path, and the hook acts at each grid time.
    """
    t_start, t_end = float(timesteps[0]), float(timesteps[-1])
    span = torch.tensor([0.0, t_start - t_end], dtype=x.dtype, device=x.device)
    if dt is None:  # from the span in x's precision, so no sliver of a step is left at the end
        # (a relative 1e-4 longer: float32 rounding must not leave a sliver that costs an extra NFE;
        # torchsde shortens the last step to end on the span)
        dt = float(span[1]) / max(len(timesteps) - 1, 1) * (1 + 1e-4)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator, device=generator.device
                             if generator is not None else "cpu").item())
    y0 = x.reshape(x.shape[0], -1)
    levy_area = "space-time" if solver == "srk" else "none"
    # The Brownian interval must end exactly where the span does, in x's precision.
    brownian = torchsde.BrownianInterval(t0=0.0, t1=float(span[1]), size=y0.shape, dtype=x.dtype,
                                         device=x.device, entropy=seed,
                                         levy_area_approximation=levy_area)
    reverse = _ReverseTimeSDE(denoiser, sde, x.shape, t_start)
    with torch.no_grad(), warnings.catch_warnings():
        # torchsde warns that adaptive Euler may not converge for non-additive noise; ours is
        # additive (g depends on t only) and is declared diagonal only to avoid D x D matrices.
        warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
        def solve(y, interval):
            return torchsde.sdeint(reverse, y, interval, bm=brownian, method=solver, dt=dt, adaptive=adaptive,
                                   rtol=rtol, atol=atol, dt_min=dt_min)[-1]
        if step_hook is None:
            return solve(y0, span).reshape(x.shape)
        taus = (t_start - timesteps.to(torch.float64)).to(x.dtype)
        taus[-1] = span[1]  # the Brownian interval ends there
        reverse.repeat_last = True
        y = run_hook(step_hook, x, timesteps[0]).reshape(y0.shape)
        for k in range(len(timesteps) - 1):
            y = solve(y, taus[k:k + 2])
            if k < len(timesteps) - 2:  # the caller has the last result
                y = run_hook(step_hook, y.reshape(x.shape), timesteps[k + 1]).reshape(y0.shape)
    return y.reshape(x.shape)
