"""Inpainting and colorization (sampling.controllable) against the exact conditionals of Gaussian
mixtures, whose perturbed scores are exact (distributions.GaussianMixture)."""
import math

import pytest
import torch

from sde_diffusion.processes.distributions import GaussianMixture
from sde_diffusion.sampling.controllable import (colorize, decoupling_matrix, inpaint, inpaint_particles,
                                                 mix_channels)
from sde_diffusion.sampling.smc import effective_sample_size, observation_bridge, systematic_resampling
from sde_diffusion.processes.sdes import get_sde

SDES = {"vpsde": dict(), "vesde": dict(sigma_min=0.01, sigma_max=10.0)}


def conditional(mixture: GaussianMixture, observed, missing, y) -> GaussianMixture:
    """The exact p(x_missing | x_observed = y) of a mixture of diagonal Gaussians: the same
    components on the missing coordinates, reweighted by w_k N(y; mu_k,obs, diag(std_k,obs^2))."""
    likelihood = torch.distributions.Normal(mixture.means[:, observed], mixture.stds[:, observed])
    weights = torch.softmax(torch.log(mixture.weights) + likelihood.log_prob(y).sum(1), 0)
    return GaussianMixture(weights, mixture.means[:, missing], mixture.stds[:, missing])


def ks_distances(mixture: GaussianMixture, x: torch.Tensor, weights=None) -> list:
    """Kolmogorov-Smirnov distance of each coordinate of x ([n, D]) to the mixture's marginal;
    `weights` ([n], summing to 1) for a weighted sample's empirical CDF."""
    weights = torch.full((len(x),), 1 / len(x), dtype=torch.float64) if weights is None else weights
    distances = []
    for d in range(x.shape[1]):
        values, order = torch.sort(x[:, d].double())
        cdf = (mixture.weights * 0.5 * (1 + torch.erf(
            (values[:, None] - mixture.means[:, d]) / (mixture.stds[:, d] * math.sqrt(2))))).sum(1)
        above = torch.cumsum(weights[order], 0)
        below = above - weights[order]
        distances.append(max((above - cdf).max().item(), (cdf - below).max().item()))
    return distances


def weighted_component_statistics(mixture: GaussianMixture, x: torch.Tensor, weights: torch.Tensor):
    """`GaussianMixture.component_statistics` of a weighted sample (x [n, D], weights [n] summing
    to 1): component weights [K], means [K, D] and stds [K, D]."""
    resp = mixture.responsibilities(x) * weights[:, None]
    mass = resp.sum(0)
    means = resp.T @ x / mass[:, None]
    variances = resp.T @ x ** 2 / mass[:, None] - means ** 2
    return mass, means, variances.clamp_min(0).sqrt()


# The observed coordinates (0, 1) have the same law in every component, so p(x_missing | y) is the
# mixture of the missing coordinates with the prior weights, and the joint perturbed density
# factorizes: the replacement method is exact here. Components differ in the missing coordinates'
# means, stds (diagonal) and weights.
SHARED_OBSERVED = GaussianMixture(
    [0.5, 0.3, 0.2],
    [[0.5, -0.5, -3.0, 1.0], [0.5, -0.5, 2.0, 2.5], [0.5, -0.5, 0.5, -2.0]],
    [[0.7, 0.5, 0.5, 0.5], [0.7, 0.5, 0.8, 0.6], [0.7, 0.5, 0.4, 0.7]])


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_inpainting_samples_the_exact_conditional(sde_name):
    sde = get_sde(sde_name, **SDES[sde_name])
    n, observed, missing = 4000, [0, 1], [2, 3]
    y = torch.tensor([1.2, 0.3], dtype=torch.float64)  # off the observed mean: y itself must be used
    observation = torch.zeros(n, 4, dtype=torch.float64)
    observation[:, observed] = y
    mask = torch.tensor([[1, 1, 0, 0]])
    x, nfe = inpaint(SHARED_OBSERVED.score_fn(sde), sde, observation, mask, steps=200, generator=0)
    assert nfe == 399  # 200 predictor steps + 199 Langevin steps
    assert torch.equal(x[:, observed], observation[:, observed])  # kept exactly
    target = conditional(SHARED_OBSERVED, observed, missing, y)
    errors = target.sample_errors(x[:, missing])
    # 4000 samples: weight errors have std <= 0.008, means 0.035 std units (w = 0.2), stds
    # 0.025 relative; KS's 1% critical value is 0.026. Measured: weight <= 0.017, mean <= 0.05,
    # std <= 0.02, KS <= 0.022.
    assert errors["weight"] < 0.04 and errors["mean"] < 0.15 and errors["std"] < 0.07, errors
    assert max(ks_distances(target, x[:, missing])) < 0.04


def test_replacement_is_biased_toward_the_prior_when_the_observation_is_informative():
    """The documented limit of the replacement method: with observed coordinates that tell the
    components apart, the output's component weights land between the exact posterior and the
    prior (the missing part picks its component while y_t is still a blurred copy of y)."""
    mixture = GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0, -3.0], [2.0, 1.0, 2.0], [0.0, -2.5, 0.0]],
                              [[0.6, 0.6, 0.5], [0.8, 0.8, 0.8], [0.5, 0.5, 0.4]])
    y = torch.tensor([0.3, -0.6], dtype=torch.float64)
    target = conditional(mixture, [0, 1], [2], y)  # posterior weights 0.07, 0.87, 0.06
    sde = get_sde("vpsde")
    observation = torch.cat([y.expand(3000, 2), torch.zeros(3000, 1, dtype=torch.float64)], 1)
    x, _ = inpaint(mixture.score_fn(sde), sde, observation, torch.tensor([[1, 1, 0]]), steps=200,
                   generator=1, predictor="euler_maruyama", corrector="none")
    weights = target.component_statistics(x[:, 2:])[0]
    prior, posterior = mixture.weights, target.weights
    # measured 0.37, 0.42, 0.21 against the posterior's 0.07, 0.87, 0.06 and the prior's
    # 0.5, 0.3, 0.2; the estimate's std is about 0.01
    assert posterior[1] - 0.2 > weights[1] > prior[1] + 0.05, weights
    assert posterior[0] + 0.1 < weights[0] < prior[0], weights


def test_colorization_keeps_the_gray_and_samples_the_exact_colour_conditional():
    """A mixture on RGB images [3, 2, 2] whose isotropic components share one gray (channel mean)
    image but differ in colour. Rotated by the decoupling matrix it stays isotropic, so given the
    gray the colour coordinates are a mixture with the prior weights, and the replacement is exact."""
    generator = torch.Generator().manual_seed(0)
    matrix = decoupling_matrix(torch.float64)
    colour = 1.5 * torch.randn(3, 2, 2, 2, generator=generator, dtype=torch.float64)  # [K, 2, H, W]
    gray_mean = torch.full((3, 1, 2, 2), 0.4, dtype=torch.float64)
    decoupled_means = torch.cat([math.sqrt(3) * gray_mean, colour], 1)  # [K, 3, 2, 2]
    means = mix_channels(decoupled_means, matrix.T).reshape(3, 12)
    mixture = GaussianMixture([0.5, 0.3, 0.2], means, [0.4, 0.4, 0.4])
    sde = get_sde("vesde", sigma_min=0.01, sigma_max=10.0)
    n = 3000
    gray = torch.full((n, 1, 2, 2), -0.3, dtype=torch.float64)
    x, nfe = colorize(mixture.score_fn(sde), sde, gray, steps=200, generator=2)
    assert x.shape == (n, 3, 2, 2) and nfe == 399
    torch.testing.assert_close(x.mean(1, keepdim=True), gray, rtol=0, atol=1e-12)
    colours = mix_channels(x, matrix)[:, 1:].reshape(n, 8)
    target = GaussianMixture(mixture.weights, colour.reshape(3, 8), [0.4, 0.4, 0.4])
    errors = target.sample_errors(colours)
    assert errors["weight"] < 0.04 and errors["mean"] < 0.15 and errors["std"] < 0.07, errors
    assert max(ks_distances(target, colours)) < 0.05


def test_mask_must_be_binary_and_broadcast():
    sde = get_sde("vpsde")
    score = GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).score_fn(sde)
    observation = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="0 .missing. and 1"):
        inpaint(score, sde, observation, torch.tensor([[0.5, 1.0]]), steps=5)
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(score, sde, observation, torch.ones(3, 2), steps=5)
    with pytest.raises(ValueError, match=r"\[B, 1, \.\.\.\]"):
        colorize(score, sde, torch.zeros(4, 3, 2, 2), steps=5)


def test_decoupling_matrix_is_orthogonal_with_the_luminance_first():
    matrix = decoupling_matrix(torch.float64)
    torch.testing.assert_close(matrix @ matrix.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(matrix[0], torch.full((3,), 3 ** -0.5, dtype=torch.float64))


# Observed coordinates (0, 1) that tell the components apart: the exact posterior weights are
# 0.07, 0.87, 0.06 against the prior's 0.5, 0.3, 0.2; two missing coordinates (2, 3).
INFORMATIVE = GaussianMixture(
    [0.5, 0.3, 0.2],
    [[-2.0, 0.0, -3.0, 1.0], [2.0, 1.0, 2.0, 2.5], [0.0, -2.5, 0.0, -2.0]],
    [[0.6, 0.6, 0.5, 0.5], [0.8, 0.8, 0.8, 0.6], [0.5, 0.5, 0.4, 0.7]])
INFORMATIVE_Y = torch.tensor([0.3, -0.6], dtype=torch.float64)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_smc_inpainting_samples_the_exact_conditional_when_the_observation_is_informative(sde_name):
    """SMCDiff (sampling.smc) where the replacement method fails: 16 populations of 1024
    particles, Euler-Maruyama, 200 steps, weighted statistics of all 16384 particles."""
    sde = get_sde(sde_name, **SDES[sde_name])
    populations, particles, observed, missing = 16, 1024, [0, 1], [2, 3]
    observation = torch.zeros(populations, 4, dtype=torch.float64)
    observation[:, observed] = INFORMATIVE_Y
    x, weights, nfe = inpaint_particles(INFORMATIVE.score_fn(sde), sde, observation, torch.tensor([1, 1, 0, 0]),
                                        particles, steps=200, generator=0, predictor="euler_maruyama",
                                        corrector="none")
    assert nfe == 200 and x.shape == (populations, particles, 4)  # the replacement sampler's NFE
    assert torch.equal(x[..., observed], observation[:, None, observed].expand(-1, particles, -1))
    torch.testing.assert_close(weights.sum(1), torch.ones(populations, dtype=torch.float64))
    target = conditional(INFORMATIVE, observed, missing, INFORMATIVE_Y)
    torch.testing.assert_close(target.weights, torch.tensor([0.0708, 0.8654, 0.0638], dtype=torch.float64),
                               rtol=0, atol=1e-4)
    samples, sample_weights = x[..., missing].reshape(-1, 2), weights.reshape(-1) / populations
    component_weights, means, stds = weighted_component_statistics(target, samples, sample_weights)
    # Resampling makes particles share ancestors, so the spread is well above that of 16384
    # independent samples: over 6 seeds (VP and VE) the weights' std is <= 0.012, the means'
    # <= 0.08 std units, the stds' <= 0.07 relative, the KS distance's about 0.01 around 0.02.
    # Replacement at the same NFE gives weights 0.41 / 0.33 / 0.26, KS 0.5 (measured).
    assert (component_weights - target.weights).abs().max() < 0.04, component_weights
    assert ((means - target.means) / target.stds).abs().max() < 0.25, means
    assert (stds / target.stds - 1).abs().max() < 0.2, stds
    assert max(ks_distances(target, samples, sample_weights)) < 0.05


def test_replacement_misses_the_informative_conditional_that_smc_gets():
    """The same case with `inpaint`: conditioning="replacement" lands near the prior weights,
    conditioning="smc" (one particle drawn per population of 128) near the posterior."""
    sde = get_sde("vesde", **SDES["vesde"])
    target = conditional(INFORMATIVE, [0, 1], [2, 3], INFORMATIVE_Y)
    observation = torch.cat([INFORMATIVE_Y.expand(250, 2), torch.zeros(250, 2, dtype=torch.float64)], 1)
    found = {}
    for method in ("replacement", "smc"):
        x, nfe = inpaint(INFORMATIVE.score_fn(sde), sde, observation, torch.tensor([[1, 1, 0, 0]]), steps=100,
                         generator=3, conditioning=method, particles=128, predictor="euler_maruyama", corrector="none")
        assert nfe == 100 and torch.equal(x[:, :2], observation[:, :2])
        found[method] = target.component_statistics(x[:, 2:])[0]
    # posterior 0.07 / 0.87 / 0.06; 250 independent outputs: std of a weight <= 0.032, and
    # populations of 128 leave a bias of about -0.03 on the largest weight. Measured:
    # replacement 0.42 / 0.37 / 0.22; smc 0.10 / 0.81 / 0.10 (largest error 0.06, and <= 0.085
    # over seeds 4-8).
    assert found["replacement"][1] < 0.5 and found["replacement"][0] > 0.3, found
    assert (found["smc"] - target.weights).abs().max() < 0.12, found


def test_observation_bridge_draws_a_forward_trajectory():
    """The trajectory y_0 (noisiest) ... y_K = y drawn from the posterior bridge has the
    forward process's joint law: marginals N(m(t) y, s(t)^2) and forward-step covariances."""
    sde = get_sde("vpsde")
    times = torch.tensor([1.0, 0.6, 0.3, 0.05], dtype=torch.float64)
    start_mean, start_std, y_coefs, previous_coefs, stds = observation_bridge(sde, times)
    generator = torch.Generator().manual_seed(0)
    y, n = 0.7, 200_000
    path = [start_mean * y + start_std * torch.randn(n, generator=generator, dtype=torch.float64)]
    for y_coef, previous_coef, std in zip(y_coefs, previous_coefs, stds):
        path.append(y_coef * y + previous_coef * path[-1] + std * torch.randn(n, generator=generator, dtype=torch.float64))
    assert torch.equal(path[-1], torch.full((n,), y, dtype=torch.float64))  # ends at y exactly
    mean_coef, std = sde.marginal_coefs(times)
    for k in range(len(times)):  # 200000 samples: mean error std <= 0.0023, std relative 0.0016
        assert abs(path[k].mean() - mean_coef[k] * y) < 0.01 and abs(path[k].std() / std[k] - 1) < 0.01
    # forward: y_k = (m_k / m_{k+1}) y_{k+1} + noise, so Cov(y_k, y_{k+1}) = (m_k / m_{k+1}) s_{k+1}^2
    for k in range(len(times) - 2):
        covariance = ((path[k] - path[k].mean()) * (path[k + 1] - path[k + 1].mean())).mean()
        expected = mean_coef[k] / mean_coef[k + 1] * std[k + 1] ** 2
        assert abs(covariance - expected) < 0.01, (k, covariance, expected)


def test_systematic_resampling_and_effective_sample_size():
    log_weights = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]))
    torch.testing.assert_close(effective_sample_size(log_weights), torch.tensor([8 / 3, 4.0]))
    ancestors = systematic_resampling(log_weights, torch.Generator().manual_seed(0))
    # systematic: each particle is copied floor(K w) or ceil(K w) times
    assert sorted(ancestors[0].tolist()) == [0, 0, 1, 2] and sorted(ancestors[1].tolist()) == [0, 1, 2, 3]


DETERMINISTIC = ["ddim eta=0", "heun", "dpm_solver++ eta=0", "dpm_solver++ order=3 unipc=true"]


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("text", DETERMINISTIC)
def test_inpainting_with_a_deterministic_sampler_moves_the_missing_part_as_sampling_does(sde_name, text):
    """The replacement is a step hook, so any sampler that steps along a grid inpaints. Where the
    joint density factorizes (SHARED_OBSERVED), the score of the missing coordinates ignores the
    observed ones, so a deterministic sampler must carry the missing part of the same latent
    exactly as plain sampling does (an exact oracle), with the observed part kept."""
    from sde_diffusion.sampling import parse_spec, sample

    sde = get_sde(sde_name, **SDES[sde_name])
    observed, missing = [0, 1], [2, 3]
    observation = torch.zeros(500, 4, dtype=torch.float64)
    observation[:, observed] = torch.tensor([1.2, 0.3], dtype=torch.float64)
    spec = parse_spec(text + " steps=12")
    x, nfe = inpaint(SHARED_OBSERVED.score_fn(sde), sde, observation, torch.tensor([[1, 1, 0, 0]]),
                     generator=0, spec=spec)
    plain, plain_nfe = sample(SHARED_OBSERVED.score_fn(sde), sde, (500, 4), spec, generator=0, dtype=torch.float64)
    assert nfe == plain_nfe == spec.score_calls(12)
    assert torch.equal(x[:, observed], observation[:, observed])
    torch.testing.assert_close(x[:, missing], plain[:, missing], rtol=1e-9, atol=1e-9)


def test_inpainting_with_ancestral_ddim_samples_the_exact_conditional():
    """A stochastic sampler other than PC (DDIM with eta = 1, DDPM's posterior step): the exact
    conditional again, within the Monte Carlo bounds of the PC test above."""
    from sde_diffusion.sampling import parse_spec

    sde = get_sde("vpsde")
    n, observed, missing = 4000, [0, 1], [2, 3]
    y = torch.tensor([1.2, 0.3], dtype=torch.float64)
    observation = torch.zeros(n, 4, dtype=torch.float64)
    observation[:, observed] = y
    x, _ = inpaint(SHARED_OBSERVED.score_fn(sde), sde, observation, torch.tensor([[1, 1, 0, 0]]), generator=0,
                   spec=parse_spec("ddim eta=1 steps=100"))
    assert torch.equal(x[:, observed], observation[:, observed])
    target = conditional(SHARED_OBSERVED, observed, missing, y)
    errors = target.sample_errors(x[:, missing])
    assert errors["weight"] < 0.04 and errors["mean"] < 0.15 and errors["std"] < 0.07, errors
    assert max(ks_distances(target, x[:, missing])) < 0.04


def test_inpainting_refuses_a_sampler_without_steps_to_hook():
    from sde_diffusion.sampling import SamplerSpec

    sde = get_sde("vpsde")
    observation, mask = torch.zeros(4, 4), torch.tensor([[1, 1, 0, 0]])
    with pytest.raises(ValueError, match="sampler 'ode' takes no step hook"):
        inpaint(SHARED_OBSERVED.score_fn(sde), sde, observation, mask, spec=SamplerSpec("ode"))
    with pytest.raises(ValueError, match="SMC inpainting .* not 'ddim'"):
        inpaint(SHARED_OBSERVED.score_fn(sde), sde, observation, mask, spec=SamplerSpec("ddim"), conditioning="smc")


def test_conditioned_runs_take_the_options_their_sampler_declares_for_them():
    """ddim and dpm_solver++ inpaint with eta = 1 unless the call sets eta (their deterministic
    forms lose to it: docs/controllable.md); UniPC's corrector stays deterministic; PC is as set."""
    from sde_diffusion.sampling import parse_spec
    from sde_diffusion.sampling.controllable import conditioning_spec

    def options(text):
        return conditioning_spec(parse_spec(text), None, {}, "replacement").options
    assert options("ddim")["eta"] == 1.0 and options("dpm_solver++")["eta"] == 1.0
    assert options("ddim eta=0")["eta"] == 0 and options("dpm_solver++ eta=0.5")["eta"] == 0.5
    assert "eta" not in options("dpm_solver++ order=3 unipc=true")
    assert options("pc predictor=euler_maruyama") == {"predictor": "euler_maruyama"}
