"""The EDM, rectified-flow and cosine-VP processes (`sde_diffusion.processes.gaussian_paths`): drift and
diffusion against the derivatives of their marginals, marginals against Monte Carlo of their
forward SDEs, the oracle's score against autograd, every kind of sampler against the exact 2-D
mixture, and the probability-flow likelihood against the exact density."""
import math

import pytest
import torch

from conftest import mixture_2d
from sde_diffusion.evaluation.likelihood import log_likelihood
from sde_diffusion.sampling import sample
from sde_diffusion.processes.sdes import get_sde

PROCESSES = {"edm": get_sde("edm"), "rectified_flow": get_sde("rectified_flow"), "cosine_vp": get_sde("cosine_vp")}
# a time range inside each process where finite differences and Monte Carlo are well conditioned
SPANS = {"edm": (0.05, 5.0), "rectified_flow": (0.02, 0.9), "cosine_vp": (0.02, 0.9)}


def eps_of(name):
    return PROCESSES[name].t_min if name == "edm" else 1e-3


@pytest.mark.parametrize("name", PROCESSES)
def test_drift_and_diffusion_give_the_marginals(name):
    """f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021)."""
    sde, (low, high) = PROCESSES[name], SPANS[name]
    t = torch.linspace(low, high, 50, dtype=torch.float64)
    h = 1e-6 * (high - low)
    (a_plus, s_plus), (a_minus, s_minus) = sde.marginal_coefs(t + h), sde.marginal_coefs(t - h)
    alpha, sigma = sde.marginal_coefs(t)
    drift = (torch.log(a_plus) - torch.log(a_minus)) / (2 * h)
    torch.testing.assert_close(sde.drift_coef(t), drift, rtol=1e-6, atol=1e-8)
    g_squared = (s_plus ** 2 - s_minus ** 2) / (2 * h) - 2 * drift * sigma ** 2
    torch.testing.assert_close(sde.diffusion(t) ** 2, g_squared, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sde.time_of_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
def test_marginals_match_monte_carlo_of_the_forward_sde(name):
    sde, (start, end) = PROCESSES[name], SPANS[name]
    generator = torch.Generator().manual_seed(0)
    x0, paths, steps = 1.5, 20000, 4000
    a0, s0 = sde.marginal_coefs(torch.tensor(start, dtype=torch.float64))
    x = a0 * x0 + s0 * torch.randn(paths, dtype=torch.float64, generator=generator)
    times = torch.linspace(start, end, steps + 1, dtype=torch.float64)
    for t, t_next in zip(times[:-1], times[1:]):
        dt = t_next - t
        x = x + sde.drift_coef(t) * x * dt + sde.diffusion(t) * dt.sqrt() * torch.randn(
            paths, dtype=torch.float64, generator=generator)
    alpha, sigma = sde.marginal_coefs(torch.tensor(end, dtype=torch.float64))
    # Monte Carlo: 20k paths give the mean to sigma / 141 and the std to sigma / 200 (one sd)
    assert abs(x.mean() - alpha * x0) < 4 * sigma / math.sqrt(paths) + 5e-3 * abs(alpha * x0)
    assert abs(x.std() / sigma - 1) < 4 / math.sqrt(2 * paths) + 5e-3


@pytest.mark.parametrize("name", PROCESSES)
def test_oracle_score_is_the_gradient_of_the_perturbed_log_density(name):
    sde, mixture = PROCESSES[name], mixture_2d()
    generator = torch.Generator().manual_seed(0)
    x = mixture.sample(64, generator=generator) + 0.3 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    low, high = eps_of(name), sde.T
    t = low + torch.rand(64, generator=generator, dtype=torch.float64) * (high - low)
    x.requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(mixture.log_prob(x, sde, t).sum(), x)
    assert torch.allclose(mixture.score_fn(sde)(x.detach(), t), autograd_score, rtol=1e-8, atol=1e-8)


# (method, steps, options): each kind of sampler, at budgets where the 2-D oracle is matched
# within the tolerances of tests/test_fast_samplers.py (10k samples)
SAMPLERS = [("dpm_solver++", 30, dict(order=2)), ("heun", 40, {}), ("ddim", 200, {}),
            ("pc", 500, dict(predictor="euler_maruyama", corrector="none")),
            ("pc", 500, dict(predictor="reverse_diffusion", corrector="none")), ("ode", 2, {})]
TOL = (0.03, 0.08, 0.05)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("method, steps, options", SAMPLERS, ids=lambda v: str(v))
def test_samplers_match_the_2d_mixture(name, method, steps, options):
    sde, mixture = PROCESSES[name], mixture_2d()
    if name == "edm" and options.get("predictor") == "euler_maruyama":
        # a uniform grid in sigma over [0.002, 80] leaves one step for sigma < 0.16: EDM's grid
        options = {**options, "schedule": "karras"}
    x, _ = sample(mixture.score_fn(sde), sde, (10000, 2), method, steps=steps, generator=2, dtype=torch.float64,
                  eps=eps_of(name), **options)
    errors = mixture.sample_errors(x)
    assert errors["weight"] < TOL[0] and errors["mean"] < TOL[1] and errors["std"] < TOL[2], errors


@pytest.mark.parametrize("name", PROCESSES)
def test_exact_trace_likelihood_matches_the_oracle_density(name):
    sde, mixture = PROCESSES[name], mixture_2d()
    x = mixture.sample(300, generator=torch.Generator().manual_seed(0))
    eps = eps_of(name)
    logp, _, nfe = log_likelihood(mixture.score_fn(sde), sde, x, trace="exact", eps=eps)
    exact = mixture.log_prob(x, sde, torch.full((len(x),), eps, dtype=torch.float64))
    assert ((logp - exact).mean() / (2 * math.log(2))).abs() <= 0.005 and nfe > 10


def test_heun_on_the_edm_process_is_edms_algorithm_2():
    """Karras et al. 2022, Algorithm 2 with their settings (18 steps, rho 7, churn off: 35 NFE),
    written here from the paper, against `sample(..., "heun")` on the `edm` process."""
    sde, mixture = PROCESSES["edm"], mixture_2d()
    score = mixture.score_fn(sde)

    def denoise(x, sigma):  # D(x; sigma) = x + sigma^2 score (Tweedie), sigma = t for this process
        return x + sigma ** 2 * score(x, torch.full((len(x),), sigma, dtype=torch.float64))

    steps, rho, sigma_min, sigma_max = 18, 7.0, 0.002, 80.0
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    latent = torch.randn(500, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x, calls = latent * t[0], 0
    for k in range(steps):
        d = (x - denoise(x, t[k].item())) / t[k]
        x_next, calls = x + (t[k + 1] - t[k]) * d, calls + 1
        if t[k + 1] > 0:
            d_next = (x_next - denoise(x_next, t[k + 1].item())) / t[k + 1]
            x_next, calls = x + (t[k + 1] - t[k]) * (d + d_next) / 2, calls + 1
        x = x_next
    ours, nfe = sample(score, sde, latent.shape, "heun", steps=steps, schedule="karras", eps=sigma_min,
                       z=latent * sigma_max, dtype=torch.float64)
    assert calls == nfe == 35
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
