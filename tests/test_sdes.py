import math

import pytest
import torch

from sde_diffusion.processes.sdes import SDES, SubVPSDE, VESDE, VPSDE, get_sde

ALL_SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)]


def simulate_forward(sde, x0, t_end, steps, generator):
    """Euler-Maruyama of the forward SDE from 0 to t_end."""
    x, dt = x0.clone(), t_end / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, dtype=x.dtype)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t_end", [0.3, 1.0])
def test_marginal_prob_matches_simulated_forward_sde(sde, t_end):
    n = 40000
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64).expand(n, 2)
    x = simulate_forward(sde, x0, t_end, 1000, torch.Generator().manual_seed(0))
    t = torch.full((n,), t_end, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    # The kernel from time 0 adds variance std(t)^2 - std(0)^2 (std(0) = sigma_min for VE).
    std0 = sde.marginal_prob(x0, torch.zeros(n, dtype=torch.float64))[1][0]
    expected_std = torch.sqrt(std[0] ** 2 - std0 ** 2)
    standard_error = expected_std / math.sqrt(n)
    assert torch.allclose(x.mean(0), mean[0], atol=5 * standard_error.item() + 2e-3 * mean[0].abs().max().item())
    assert torch.allclose(x.std(0), expected_std.expand(2), rtol=0.015)


def test_vp_chain_is_ddpm():
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    ddpm_betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.equal(sde.chain.betas, ddpm_betas)
    assert torch.allclose(sde.chain.alpha_bar, torch.cumprod(1 - ddpm_betas, 0))
    # discretize at t = i / 999 is DDPM's q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x, beta_i).
    index = torch.arange(1000)
    t = index.double() / 999
    assert torch.equal(sde.chain.step_index(t), index)
    x = torch.randn(1000, 3, dtype=torch.float64)
    f, G = sde.chain.discretize(x, t)
    assert torch.allclose(x + f, torch.sqrt(1 - ddpm_betas)[:, None] * x, atol=1e-12)
    assert torch.allclose(G, torch.sqrt(ddpm_betas))


def test_ve_chain_is_ncsn_geometric_sigmas():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    ratio = (50.0 / 0.01) ** (1 / 9)
    expected = 0.01 * ratio ** torch.arange(10, dtype=torch.float64)
    assert torch.allclose(sde.chain.sigmas, expected, rtol=1e-12)
    chain_t = sde.chain.time(torch.arange(10))
    assert torch.allclose(sde.marginal_coefs(chain_t)[1], expected, rtol=1e-12)
    f, G = sde.chain.discretize(torch.ones(10, 2, dtype=torch.float64), chain_t)
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), expected[:-1]])
    assert torch.equal(f, torch.zeros_like(f))
    assert torch.allclose(G, torch.sqrt(expected ** 2 - previous ** 2))


def test_vp_ancestral_step_is_ddpm_update():
    sde = VPSDE()
    index = torch.tensor([0, 1, 500, 999])
    beta = sde.chain.betas[index]
    alpha_bar = sde.chain.alpha_bar[index]
    generator = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(4, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    score = -eps / torch.sqrt(1 - alpha_bar)[:, None]
    a, b, c = sde.chain.ancestral_coefs(index)
    ours = a[:, None] * x + b[:, None] * score + c[:, None] * z
    ddpm = (x - (beta / torch.sqrt(1 - alpha_bar))[:, None] * eps) / torch.sqrt(1 - beta)[:, None] \
        + torch.sqrt(beta)[:, None] * z
    assert torch.allclose(ours, ddpm, atol=1e-12)


def test_vp_chain_time_matches_alpha_bar():
    for N in (10, 1000, 4000):
        sde = VPSDE(N=N)
        index = torch.arange(N)
        mean_coef, _ = sde.marginal_coefs(sde.chain.time(index))
        assert torch.allclose(mean_coef ** 2, sde.chain.alpha_bar, rtol=1e-10)


@pytest.mark.parametrize("N", [1, 2, 10, 50])
def test_short_vp_chains_are_respaced_ddpm(N):
    sde = VPSDE(N=N)
    assert ((sde.chain.betas > 0) & (sde.chain.betas < 1)).all()
    ddpm_alpha_bar = VPSDE(N=1000).chain.alpha_bar
    assert torch.allclose(sde.chain.alpha_bar[-1], ddpm_alpha_bar[-1])
    kept = ddpm_alpha_bar[torch.round(torch.linspace(0, 999, N, dtype=torch.float64)).long()] if N > 1 \
        else ddpm_alpha_bar[-1:]
    assert torch.allclose(sde.chain.alpha_bar, kept, rtol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_shape_and_dtype(sde, dtype):
    x = torch.randn(3, 2, 4, 4, dtype=dtype)
    t = torch.tensor([0.1, 0.5, 1.0], dtype=dtype)
    drift, g = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f, G = sde.chain.discretize(x, t)
    assert drift.shape == mean.shape == f.shape == x.shape
    assert g.shape == std.shape == G.shape == (3,)
    assert drift.dtype == mean.dtype == f.dtype == dtype
    z = sde.prior_sampling((3, 2, 4, 4), generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert z.shape == x.shape and z.dtype == dtype


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_prior_logp_is_gaussian_log_density(sde):
    z = torch.randn(5, 3, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, sde.prior_std)
    assert torch.allclose(sde.prior_logp(z), normal.log_prob(z).sum(1))


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_reverse_sde_and_probability_flow(sde):
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.rand(4, dtype=torch.float64)
    score_fn = lambda x, t: -2.0 * x  # noqa: E731
    drift, g = sde.sde(x, t)
    rev_drift, rev_g = sde.reverse(score_fn).sde(x, t)
    assert torch.allclose(rev_drift, drift - g[:, None] ** 2 * score_fn(x, t))
    assert torch.equal(rev_g, g)
    flow_drift, flow_g = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    assert torch.allclose(flow_drift, drift - 0.5 * g[:, None] ** 2 * score_fn(x, t))
    assert torch.equal(flow_g, torch.zeros_like(g))
    f, G = sde.chain.discretize(x, t)
    rev_f, rev_G = sde.reverse(score_fn).discretize(x, t)
    assert torch.allclose(rev_f, f - G[:, None] ** 2 * score_fn(x, t))


def test_registry_and_errors():
    assert set(SDES) == {"vpsde", "subvpsde", "vesde", "edm", "rectified_flow", "cosine_vp", "discrete_vp"}
    assert get_sde("vesde", sigma_max=10.0).sigma_max == 10.0
    with pytest.raises(ValueError, match="known: cosine_vp, discrete_vp, edm, rectified_flow, subvpsde, vesde, vpsde"):
        get_sde("vp")
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="N must be"):
        VESDE(N=0)
    with pytest.raises(ValueError, match="ancestral sampling is not defined for SubVPSDE"):
        SubVPSDE().chain.ancestral_coefs(torch.arange(3))
