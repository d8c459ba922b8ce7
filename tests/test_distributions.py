import math

import pytest
import torch
from scipy.stats import multivariate_normal

from sde_diffusion.processes.distributions import GaussianMixture
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d, mixture_32d


def diagonal_mixture():
    return GaussianMixture([1.0, 2.0], [[0.0, 1.0, -1.0], [2.0, -2.0, 0.5]],
                           [[0.2, 0.5, 1.0], [0.7, 0.1, 0.3]])


def test_log_prob_matches_scipy():
    mixture = diagonal_mixture()
    x = torch.randn(20, 3, dtype=torch.float64)
    expected = sum(w * multivariate_normal(m.numpy(), torch.diag(s ** 2).numpy()).pdf(x.numpy())
                   for w, m, s in zip(mixture.weights, mixture.means, mixture.stds))
    assert torch.allclose(mixture.log_prob(x), torch.log(torch.as_tensor(expected)), atol=1e-10)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("make_mixture", [mixture_2d, diagonal_mixture, mixture_32d])
def test_score_is_gradient_of_perturbed_log_density(sde, make_mixture):
    mixture = make_mixture()
    generator = torch.Generator().manual_seed(0)
    x = mixture.sample(64, generator=generator) + 0.3 * torch.randn(64, mixture.dim, generator=generator, dtype=torch.float64)
    t = torch.rand(64, generator=generator, dtype=torch.float64) * 0.999 + 1e-3
    x.requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(mixture.log_prob(x, sde, t).sum(), x)
    assert torch.allclose(mixture.score_fn(sde)(x.detach(), t), autograd_score, rtol=1e-8, atol=1e-8)


def test_perturbed_marginal_is_the_forward_process_of_samples():
    # Pushing exact samples through the kernel N(m x, s^2) gives samples of p_t: their mean
    # log p_t must equal E_{p_t}[log p_t], estimated from an independent run.
    mixture, sde, t = mixture_2d(), VPSDE(), 0.4
    def perturbed_samples(seed):
        generator = torch.Generator().manual_seed(seed)
        x0 = mixture.sample(50000, generator=generator)
        mean, std = sde.marginal_prob(x0, torch.full((50000,), t, dtype=torch.float64))
        return mean + std[:, None] * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    a, b = (mixture.log_prob(perturbed_samples(s), sde, t) for s in (1, 2))
    assert abs(a.mean() - b.mean()) < 4 * math.sqrt(a.var() / 50000 + b.var() / 50000)
    # ...and the density at a wrong time is clearly worse.
    assert mixture.log_prob(perturbed_samples(1), sde, 0.1).mean() < a.mean() - 0.1


def test_images_shape_score():
    mixture = mixture_32d()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    t = torch.full((5,), 0.5, dtype=torch.float64)
    score = mixture.score_fn(VPSDE())(x, t)
    assert score.shape == x.shape
    assert torch.allclose(score.reshape(5, 32), mixture.score(x.reshape(5, 32), VPSDE(), t))


def test_samples_have_the_mixture_statistics():
    mixture = mixture_2d()
    x, components = mixture.sample(40000, generator=torch.Generator().manual_seed(0), return_components=True)
    weights, means, stds = mixture.component_statistics(x)
    assert torch.allclose(weights, mixture.weights, atol=0.01)
    assert torch.allclose(means, mixture.means, atol=0.02)
    assert torch.allclose(stds, mixture.stds, rtol=0.03)
    counts = torch.bincount(components, minlength=3).double() / 40000
    assert torch.allclose(counts, mixture.weights, atol=0.01)
    errors = mixture.sample_errors(x)
    assert errors["weight"] < 0.01 and errors["mean"] < 0.03 and errors["std"] < 0.02
    assert abs(errors["logp_gap"]) < 0.03
    # A spread-out sample set is flagged by every measure.
    errors = mixture.sample_errors(x * 1.3)
    assert errors["std"] > 0.2 and errors["logp_gap"] < -0.2


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixture([1.0], [0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="stds must be positive"):
        GaussianMixture([1.0], [[0.0, 1.0]], [-1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.0, -1.0], [[0.0], [1.0]], [1.0, 1.0])
