"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, sec. 4.3, app. D.2).

Along the ODE dx/dt = f~(x, t), the log-density obeys d log p_t(x_t)/dt = -div f~(x_t, t)
(the instantaneous change of variables, Chen et al. 2018), so for data x at time eps

    log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt,

solved jointly with x_t by an adaptive ODE solver (scipy's or torchdiffeq's). The divergence
is exact (one backward pass per dimension) or Hutchinson's unbiased estimate E[v^T (d f~/dx) v]
with one probe v per solve (Grathwohl et al. 2019), which keeps the ODE deterministic for the
adaptive solver.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..sampling.ode import MAX_NFE, probability_flow_drift, solve_ivp_torch
from ..processes.denoiser import CountedDenoiser, as_denoiser
from ..processes.sdes import SDE, ScoreFn
from ..utils import Seed, batch_sum, make_generator, randn


def _divergence_exact(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d d drift_d / d x_d per sample, by one backward pass per dimension."""
    flat_drift = drift.reshape(drift.shape[0], -1)
    divergence = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for d in range(flat_drift.shape[1]):
        grad = torch.autograd.grad(flat_drift[:, d].sum(), x, retain_graph=True)[0]
        divergence = divergence + grad.reshape(x.shape[0], -1)[:, d]
    return divergence


def _divergence_hutchinson(drift: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """v^T (d drift / dx) v per sample, by one vector-Jacobian product."""
    grad = torch.autograd.grad((drift * probe).sum(), x)[0]
    return batch_sum(grad * probe)


def _probe(shape, noise: str, generator, like: torch.Tensor) -> torch.Tensor:
    if noise == "gaussian":
        return randn(shape, generator, like)
    if noise == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return bits.to(like.dtype) * 2 - 1
    raise ValueError(f"unknown Hutchinson noise {noise!r}; known: gaussian, rademacher")


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, *, trace: str = "hutchinson",
                   noise: str = "rademacher", rtol: float = 3e-5, atol: float = 3e-5,
                   eps: float = 1e-5, solver: str = "RK45", max_nfe: Optional[int] = MAX_NFE,
                   generator: Seed = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """log p_eps(x) in nats per sample, for x given in the space the score is defined on.

    trace: "exact" (D backward passes per evaluation: small D only) or "hutchinson";
    noise: Hutchinson's probe distribution, "rademacher" (lower variance) or "gaussian";
    solver, rtol, atol: an ODE solver of `sampling.ode` (scipy's RK45, DOP853, ... or
    torchdiffeq's dopri5, dopri8, ...) and its tolerances; eps: the start time; max_nfe: stop
    with `SolverStopped` (one line) past that many evaluations (None: never), as at a step below
    floating-point resolution. Returns (logp [B], z = x_T, nfe), nfe being the number of score
    evaluations.
    """
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"unknown trace {trace!r}; known: exact, hutchinson")
    shape, batch = x.shape, x.shape[0]
    dim = x[0].numel()
    counted = CountedDenoiser(as_denoiser(score_fn, sde))
    drift_fn = probability_flow_drift(counted, sde)
    probe = None
    if trace == "hutchinson":
        probe = _probe(shape, noise, make_generator(generator, x.device), x)

    def augmented(state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_t = state[:, :dim].reshape(shape).detach().requires_grad_(True)
            drift = drift_fn(x_t, t)
            if probe is None:
                divergence = _divergence_exact(drift, x_t)
            else:
                divergence = _divergence_hutchinson(drift, x_t, probe)
        return torch.cat([drift.detach().reshape(batch, dim), divergence.detach()[:, None]], dim=1)

    state = torch.cat([x.reshape(batch, dim), x.new_zeros(batch, 1)], dim=1)
    final = solve_ivp_torch(augmented, state, eps, sde.T, rtol=rtol, atol=atol, solver=solver, max_nfe=max_nfe,
                            what="likelihood ODE")
    z = final[:, :dim].reshape(shape)
    return sde.prior_logp(z) + final[:, dim], z, counted.calls


def bits_per_dim(score_fn: ScoreFn, sde: SDE, images: torch.Tensor, *, centered: bool = True,
                 levels: int = 256, generator: Seed = None,
                 **likelihood_options) -> Tuple[torch.Tensor, int]:
    """Negative log-likelihood of quantized images in bits per dimension; returns (bpd [B], nfe).

    images: values k / (levels - 1) in [0, 1], k integer (as torchvision's ToTensor gives).
    Definition: with uniform dequantization y = (k + u) / levels, u ~ U[0, 1)^D, every density
    p on [0, 1)^D gives a probability model of the integers, P(k) = int_{bin(k)} p(y) dy, and by
    Jensen's inequality -log P(k) <= -E_u log p(y) + D log(levels). We report that bound, in bits
    per dimension, with one draw of u per image:

        bpd = (-log p(y) + D log(levels)) / (D log 2),

    where log p(y) = log p_model(a y + b) + D log|a| for a model defined on a y + b ([-1, 1]
    when `centered`, a = 2, b = -1). No constant offset: the 8-bit discretization is the
    D log(levels) term. Its expectation is an upper bound on -log2 P(k) / D >= 0, so it cannot be
    negative on average, unlike -log p(x) / (D log 2) on undequantized data.
    """
    generator = make_generator(generator, images.device)
    k = torch.round(images * (levels - 1))
    if (k < 0).any() or (k > levels - 1).any():
        raise ValueError(f"images must lie in [0, 1] (as k / {levels - 1}), got values outside")
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    y = (k + u) / levels
    scale, shift = (2.0, -1.0) if centered else (1.0, 0.0)
    logp_model, _, nfe = log_likelihood(score_fn, sde, scale * y + shift,
                                        generator=generator, **likelihood_options)
    dim = images[0].numel()
    logp_y = logp_model + dim * math.log(scale)
    return (-logp_y + dim * math.log(levels)) / (dim * math.log(2)), nfe
