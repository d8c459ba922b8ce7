import math

import pytest
import torch

from sde_diffusion.processes.distributions import GaussianMixture
from sde_diffusion.evaluation.likelihood import bits_per_dim, log_likelihood
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d, mixture_32d

EPS = 1e-5


def bits_per_dim_gap(logp, exact, dim):
    return ((logp - exact).mean() / (dim * math.log(2))).abs().item()


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_exact_trace_likelihood_matches_the_oracle_density(sde):
    mixture = mixture_2d()
    x = mixture.sample(300, generator=torch.Generator().manual_seed(0))
    logp, z, nfe = log_likelihood(mixture.score_fn(sde), sde, x, trace="exact", eps=EPS)
    exact = mixture.log_prob(x, sde, EPS)
    assert bits_per_dim_gap(logp, exact, 2) <= 0.005
    assert (logp - exact).abs().max() < 0.1
    assert z.shape == x.shape and nfe > 10


def test_exact_trace_likelihood_in_32_dimensions():
    mixture, sde = mixture_32d(), VPSDE()
    x = mixture.sample(64, generator=torch.Generator().manual_seed(0))
    logp, _, _ = log_likelihood(mixture.score_fn(sde), sde, x, trace="exact", eps=EPS)
    assert bits_per_dim_gap(logp, mixture.log_prob(x, sde, EPS), 32) <= 0.005


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_trace_within_its_standard_error(noise):
    mixture, sde = mixture_2d(), VPSDE()
    x = mixture.sample(400, generator=torch.Generator().manual_seed(0))
    exact, _, _ = log_likelihood(mixture.score_fn(sde), sde, x, trace="exact", eps=EPS)
    estimate, _, _ = log_likelihood(mixture.score_fn(sde), sde, x, trace="hutchinson", noise=noise,
                                    eps=EPS, generator=1)
    difference = estimate - exact
    standard_error = difference.std() / math.sqrt(len(difference))
    assert difference.std() > 0  # the estimate is random...
    assert difference.mean().abs() < 3 * standard_error  # ...and unbiased


def test_likelihood_ranks_in_and_out_of_distribution_points():
    mixture, sde = mixture_2d(), VESDE()
    inside = mixture.means.clone()
    outside = inside + torch.tensor([0.0, 8.0], dtype=inside.dtype)
    logp_in, _, _ = log_likelihood(mixture.score_fn(sde), sde, inside, trace="exact")
    logp_out, _, _ = log_likelihood(mixture.score_fn(sde), sde, outside, trace="exact")
    assert (logp_in > logp_out + 5).all()


def pixel_mixture(std):
    """A density on 4 'pixels' in model space [-1, 1], two components."""
    return GaussianMixture([0.5, 0.5], [[-0.5, 0.0, 0.3, 0.6], [0.4, -0.2, -0.6, 0.1]], [std, std])


def quantized_images(mixture, n, generator):
    images = (mixture.sample(n, generator=generator).clamp(-1, 1) + 1) / 2  # to [0, 1]
    return torch.round(images * 255) / 255


def test_bits_per_dim_matches_the_oracle_on_dequantized_data():
    mixture, sde = pixel_mixture(0.2), VPSDE()
    images = quantized_images(mixture, 200, torch.Generator().manual_seed(0))
    bpd, nfe = bits_per_dim(mixture.score_fn(sde), sde, images, generator=3, trace="exact", eps=EPS)
    # The same uniform dequantization drawn again, scored by the oracle directly.
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(3), dtype=images.dtype)
    y = (torch.round(images * 255) + u) / 256
    logp_y = mixture.log_prob(2 * y - 1, sde, EPS) + 4 * math.log(2)
    expected = (-logp_y + 4 * math.log(256)) / (4 * math.log(2))
    assert torch.allclose(bpd, expected, atol=0.01)
    assert nfe > 10


def test_bits_per_dim_is_not_negative_where_the_naive_formula_is():
    # A model far sharper than one quantization bin: -log p(x) / (D log 2) on the raw pixels is
    # negative, but the dequantized bound accounts for the 8-bit discretization.
    mixture = pixel_mixture(0.001)
    images = quantized_images(mixture, 2000, torch.Generator().manual_seed(0))
    naive = -mixture.log_prob(2 * images - 1) / (4 * math.log(2))
    assert naive.mean() < -1
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(1), dtype=images.dtype)
    y = (torch.round(images * 255) + u) / 256
    bound = (-(mixture.log_prob(2 * y - 1) + 4 * math.log(2)) + 4 * math.log(256)) / (4 * math.log(2))
    assert bound.mean() > 0


def test_bad_arguments():
    mixture, sde = mixture_2d(), VPSDE()
    x = mixture.sample(4)
    with pytest.raises(ValueError, match="unknown trace"):
        log_likelihood(mixture.score_fn(sde), sde, x, trace="skilling")
    with pytest.raises(ValueError, match="unknown Hutchinson noise"):
        log_likelihood(mixture.score_fn(sde), sde, x, noise="uniform")
    with pytest.raises(ValueError, match="images must lie in"):
        bits_per_dim(mixture.score_fn(sde), sde, torch.full((2, 2), 1.5))
