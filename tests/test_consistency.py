"""Consistency models: the table's consistency row (boundary condition), the consistency sampler
on the exact consistency function of Gaussian data, ECT's loss and gap schedule, iCT's grid,
pair draw and loss."""
import math

import pytest
import torch

from sde_diffusion.models.preconditioning import (CONSISTENCY_SIGMA_MIN, EDM_SIGMA_DATA, coefficients,
                                                  denoiser_from_model, edm_coefficients)
from sde_diffusion.processes.denoiser import Denoiser
from sde_diffusion.processes.sdes import VPSDE, get_sde
from sde_diffusion.sampling import sample
from sde_diffusion.training.consistency import ect_gap_level, ect_loss, ict_levels, ict_loss, ict_pair_probabilities


class Network(torch.nn.Module):
    """F(x, label): anything finite that depends on both."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.linear = torch.nn.Linear(dim + 1, dim).double()

    def forward(self, x, labels):
        return self.linear(torch.cat([x, labels[:, None]], dim=1))


@pytest.mark.parametrize("name", ["edm", "vpsde", "vesde"])
def test_the_consistency_function_is_the_identity_at_sigma_min(name):
    """f(x, t) = x / alpha(t) at the noise level n_min, whatever the network says: c_skip
    alpha = 1 and c_out = 0 there (Song et al. 2023, eq. 5)."""
    sde = get_sde(name)
    t = torch.full((4,), sde.time_of_noise_level(CONSISTENCY_SIGMA_MIN), dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = denoiser_from_model(Network(), sde, parameterization="consistency")
    alpha = sde.marginal_coefs(t)[0][:, None]
    if name == "vesde":  # VE's noise level never falls to n_min = 0.002: t = 0 is its sigma_min 0.01
        assert float(sde.noise_level(t[0])) == pytest.approx(0.01)
        return
    torch.testing.assert_close(f(x, t), x / alpha, rtol=1e-12, atol=0)
    if name == "edm":
        assert torch.equal(f(x, t), x)  # alpha = 1: exactly


def test_far_from_sigma_min_the_consistency_row_is_edms():
    """Same c_in and c_noise as EDM's row (one network tunes into the other); c_skip and c_out
    differ by O(n_min / n)."""
    sde = get_sde("edm")
    x = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([0.5, 5.0, 50.0], dtype=torch.float64)
    edm, consistency = coefficients("edm", sde, t, x), coefficients("consistency", sde, t, x)
    torch.testing.assert_close(consistency.c_in, edm.c_in, rtol=0, atol=0)
    torch.testing.assert_close(consistency.c_noise, edm.c_noise, rtol=0, atol=0)
    for row_c, edm_c in ((consistency.c_skip, edm.c_skip), (consistency.c_out, edm.c_out)):
        gap = (row_c / edm_c - 1).abs().flatten()
        assert (gap < 2 * CONSISTENCY_SIGMA_MIN / t.sqrt()).all() and gap[-1] < 1e-4, gap
    c_skip, c_out, _, _ = edm_coefficients(t)
    torch.testing.assert_close(edm.c_skip.flatten(), c_skip)


def gaussian_consistency_function(sde, mean: float, std: float) -> Denoiser:
    """The exact consistency function of data N(mean, std^2 I): along the probability-flow ODE
    the standardised x / alpha - mean scales by std / sqrt(std^2 + n^2), so its start is
    mean + std (x / alpha - mean) / sqrt(std^2 + n^2) (n = sigma / alpha)."""
    def f(x, t, class_labels=None):
        alpha, sigma = (c[:, None] for c in sde.marginal_coefs(t))
        level = sigma / alpha
        return mean + std * (x / alpha - mean) / torch.sqrt(std ** 2 + level ** 2)
    return Denoiser(sde, f)


@pytest.mark.parametrize("name", ["edm", "vpsde"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_with_the_exact_function_draws_the_data(name, steps):
    """With the exact consistency function every step lands on an exact sample, and re-noising
    an exact sample gives the exact marginal: mean and std of the data within Monte Carlo error
    (40k samples: std of the mean 0.005, of the std about 0.004), up to the prior's mismatch
    with p_T (EDM: std sqrt(80^2 + 0.25) vs 80)."""
    sde = get_sde(name)
    mean, std = 0.7, 0.5
    x, nfe = sample(gaussian_consistency_function(sde, mean, std), sde, (40_000, 1), "consistency",
                    steps=steps, generator=0, dtype=torch.float64)
    assert nfe == steps
    assert abs(x.mean().item() - mean) < 0.02 and abs(x.std().item() / std - 1) < 0.02


def test_the_default_two_step_grid_renoises_at_its_declared_level():
    sde = get_sde("edm")
    seen = []
    f = gaussian_consistency_function(sde, 0.0, 0.5)
    sample(Denoiser(sde, lambda x, t, c=None: (seen.append(float(t[0])), f(x, t))[1]), sde, (4, 1),
           "consistency", steps=2, generator=0)
    assert seen == pytest.approx([80.0, 0.8], rel=1e-6)  # float32 times


def test_ects_gap_starts_at_zero_and_closes_as_training_goes_on():
    level = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    assert torch.equal(ect_gap_level(level, 0, 1000), torch.zeros_like(level))
    previous = torch.zeros_like(level)
    for step in (125, 250, 500, 1000):
        gap = ect_gap_level(level, step, 1000)
        assert (gap >= previous).all() and (gap < level).all()
        previous = gap
    # the last stage (8 of 8): r = n (1 - 2^-8 (1 + 8 sigmoid(-n)))
    expected = level * (1 - 2.0 ** -8 * (1 + 8 * torch.sigmoid(-level)))
    torch.testing.assert_close(previous, expected, rtol=1e-12, atol=0)


def test_ect_at_its_start_is_the_denoising_loss_of_the_consistency_function():
    """At step 0 every gap is 0 and the target is the data: the loss is the mean over the batch
    of ||f(x_t, t) - x_0||^2 / (dims n), with the levels ln n ~ N(-1.1, 2^2) and z drawn in that
    order from the generator."""
    sde = get_sde("edm")
    network = Network()
    f = denoiser_from_model(network, sde, parameterization="consistency")
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = ect_loss(f, sde, x, step=0, n_iters=1000, generator=torch.Generator().manual_seed(2))
    draws = torch.Generator().manual_seed(2)
    level = torch.exp(-1.1 + 2.0 * torch.randn(64, generator=draws, dtype=torch.float64)).clamp(1e-5, 80.0)
    z = torch.randn(64, 3, generator=draws, dtype=torch.float64)
    error = ((f(x + level[:, None] * z, level) - x) ** 2).mean(dim=1)
    torch.testing.assert_close(loss, (error / level).mean(), rtol=1e-12, atol=0)
    loss.backward()
    assert network.linear.weight.grad.abs().sum() > 0


def test_ect_later_compares_with_the_stopped_function_at_the_smaller_level():
    """At step i > 0 the target is f(x_r, r) with r from the gap schedule, without gradient."""
    sde = get_sde("edm")
    f = denoiser_from_model(Network(), sde, parameterization="consistency")
    x = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = ect_loss(f, sde, x, step=900, n_iters=1000, generator=torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)
    level = torch.exp(-1.1 + 2.0 * torch.randn(32, generator=draws, dtype=torch.float64)).clamp(1e-5, 80.0)
    z = torch.randn(32, 3, generator=draws, dtype=torch.float64)
    gap = ect_gap_level(level, 900, 1000)
    gap = torch.where(gap > CONSISTENCY_SIGMA_MIN, gap, torch.zeros_like(gap))
    with torch.no_grad():
        target = torch.where((gap > 0)[:, None], f(x + gap[:, None] * z, gap.clamp(min=1e-5)), x)
    error = ((f(x + level[:, None] * z, level) - target) ** 2).mean(dim=1)
    torch.testing.assert_close(loss, (error / (level - gap)).mean(), rtol=1e-10, atol=0)
    assert math.isfinite(loss.item()) and EDM_SIGMA_DATA == 0.5


def test_icts_grid_doubles_from_s0_to_s1_over_training():
    """N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1 / s0) + 1)) (Song &
    Dhariwal 2023, eq. 8): 11, 21, ..., 1281 levels, each Karras' rho-7 grid from 0.002 to 80."""
    total = 8000  # K' = floor(8000 / 8) = 1000
    sizes = [len(ict_levels(step, total, 0.002, 80.0)) for step in (0, 999, 1000, 2500, 6999, 7000, 7999)]
    assert sizes == [11, 11, 21, 41, 641, 1281, 1281]
    levels = ict_levels(0, total, 0.002, 80.0)
    assert levels[0] == pytest.approx(0.002, rel=1e-12) and levels[-1] == pytest.approx(80.0, rel=1e-12)
    roots = levels ** (1 / 7)
    torch.testing.assert_close(torch.diff(roots), torch.full((10,), float(roots[1] - roots[0]), dtype=torch.float64))


def test_icts_pairs_carry_the_log_normal_mass_between_their_levels():
    levels = ict_levels(0, 1000, 0.002, 80.0)
    probabilities = ict_pair_probabilities(levels, -1.1, 2.0)
    normal = torch.distributions.Normal(torch.tensor(-1.1, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    mass = normal.cdf(torch.log(levels[1:])) - normal.cdf(torch.log(levels[:-1]))
    torch.testing.assert_close(probabilities, mass / mass.sum(), rtol=1e-12, atol=0)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)


def test_ict_loss_is_the_pseudo_huber_distance_between_adjacent_levels():
    """The pair (sigma_i, sigma_(i+1)) drawn by one uniform per row, then z: the mean of
    (sqrt(||f(x + s_(i+1) z) - sg f(x + s_i z)||^2 + c^2) - c) / (s_(i+1) - s_i), c = 0.00054 sqrt(d)."""
    sde = get_sde("edm")
    network = Network()
    f = denoiser_from_model(network, sde, parameterization="consistency")
    x = torch.randn(256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = ict_loss(f, sde, x, step=500, n_iters=1000, generator=torch.Generator().manual_seed(4))
    levels = ict_levels(500, 1000, CONSISTENCY_SIGMA_MIN, 80.0)
    assert len(levels) == 161  # K' = floor(1000 / 8) = 125, so 500 // 125 = 4 doublings of 10
    draws = torch.Generator().manual_seed(4)
    u = torch.rand(256, generator=draws, dtype=torch.float64)
    pair = torch.searchsorted(torch.cumsum(ict_pair_probabilities(levels, -1.1, 2.0), 0), u, right=True)
    lower, upper = levels[pair], levels[pair + 1]
    z = torch.randn(256, 3, generator=draws, dtype=torch.float64)
    with torch.no_grad():
        target = f(x + lower[:, None] * z, lower)
    c = 0.00054 * math.sqrt(3)
    distance = torch.sqrt(((f(x + upper[:, None] * z, upper) - target) ** 2).sum(dim=1) + c ** 2) - c
    torch.testing.assert_close(loss, (distance / (upper - lower)).mean(), rtol=1e-10, atol=0)
    loss.backward()
    assert network.linear.weight.grad.abs().sum() > 0
    # the draw favours the log-normal's bulk: most pairs lie between e^(-1.1 -+ 2)
    assert 0.5 < ((lower > math.exp(-3.1)) & (upper < math.exp(0.9))).double().mean() < 0.9
