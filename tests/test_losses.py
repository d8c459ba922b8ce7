import math

import pytest
import torch

from sde_diffusion.processes.distributions import GaussianMixture
from sde_diffusion.training.losses import ddpm_loss, dsm_loss, prediction_loss, smld_loss
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)], ids=lambda s: type(s).__name__)
def test_dsm_loss_at_the_exact_score_has_its_closed_form(sde):
    # Data N(0, s0^2 I): with x_t = m x + s z and the exact score -x_t / v, v = m^2 s0^2 + s^2,
    # E || s score + z ||^2 / 2 = D m^2 s0^2 / (2 v); averaged over t ~ U(eps, T) by quadrature.
    s0, dim, n, eps = 0.5, 3, 200_000, 1e-5
    data = GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64), [s0])
    x = data.sample(n, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    per_sample = [dsm_loss(data.score_fn(sde), sde, x[i:i + 1000], eps=eps, generator=generator)
                  for i in range(0, n, 1000)]
    estimate = torch.stack(per_sample)
    t = torch.linspace(eps, 1.0, 200_001, dtype=torch.float64)
    m, s = sde.marginal_coefs(t)
    integrand = dim * m ** 2 * s0 ** 2 / (2 * (m ** 2 * s0 ** 2 + s ** 2))
    expected = torch.trapezoid(integrand, t) / (1.0 - eps)
    assert abs(estimate.mean() - expected) < 4 * estimate.std() / math.sqrt(len(estimate))


@pytest.mark.parametrize("loss_fn, sde, options", [
    (dsm_loss, VPSDE(), {}),
    (dsm_loss, SubVPSDE(), {"reduce_mean": True}),
    (dsm_loss, VESDE(), {"likelihood_weighting": True, "eps": 1e-3}),
    (ddpm_loss, VPSDE(), {}),
    (smld_loss, VESDE(sigma_max=10.0, N=100), {}),
    (dsm_loss, VPSDE(), {"min_snr_gamma": 5.0}),
    (prediction_loss, VPSDE(), {"target": "v"}),
    (prediction_loss, SubVPSDE(), {"target": "data", "min_snr_gamma": 5.0}),
], ids=["dsm-vp", "dsm-subvp-mean", "dsm-ve-likelihood", "ddpm", "smld", "dsm-vp-min-snr", "v-vp", "x0-subvp-min-snr"])
def test_exact_score_minimizes_the_loss(loss_fn, sde, options):
    mixture = mixture_2d()
    x = mixture.sample(50_000, generator=torch.Generator().manual_seed(0))
    exact = mixture.score_fn(sde)
    def loss(score_fn):  # the same times and noise for every score: common random numbers
        return loss_fn(score_fn, sde, x, generator=torch.Generator().manual_seed(1), **options).item()
    at_exact = loss(exact)
    for perturbed in (lambda x, t: 1.1 * exact(x, t), lambda x, t: exact(x, t) + 0.05, lambda x, t: 0.9 * exact(x, t)):
        assert loss(perturbed) > at_exact * 1.001


def test_chain_losses_need_their_sde():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="VP SDE"):
        ddpm_loss(lambda x, t: x, VESDE(), x)
    with pytest.raises(ValueError, match="VE SDE"):
        smld_loss(lambda x, t: x, VPSDE(), x)


def test_min_snr_gamma_weights_each_term_by_min_snr_gamma_over_snr():
    """Data N(0, s0^2 I) and its exact score: the term at t has mean D m^2 s0^2 / (2 v) (the
    closed form above); with Min-SNR-5 its weight is min(SNR, 5) / SNR, SNR = m^2 / s^2. The
    weighting must change the loss (the weight is below 1 where SNR > 5, at small t)."""
    sde, s0, dim, n, eps = VPSDE(), 0.5, 3, 200_000, 1e-5
    data = GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64), [s0])
    x = data.sample(n, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    estimate = torch.stack([dsm_loss(data.score_fn(sde), sde, x[i:i + 1000], eps=eps, generator=generator,
                                     min_snr_gamma=5.0) for i in range(0, n, 1000)])
    t = torch.linspace(eps, 1.0, 200_001, dtype=torch.float64)
    m, s = sde.marginal_coefs(t)
    snr = m ** 2 / s ** 2
    term = dim * m ** 2 * s0 ** 2 / (2 * (m ** 2 * s0 ** 2 + s ** 2))
    expected = torch.trapezoid(term * snr.clamp(max=5.0) / snr, t) / (1.0 - eps)
    unweighted = torch.trapezoid(term, t) / (1.0 - eps)
    assert abs(estimate.mean() - expected) < 4 * estimate.std() / math.sqrt(len(estimate))
    assert unweighted - expected > 10 * estimate.std() / math.sqrt(len(estimate))
    with pytest.raises(ValueError, match="choose one"):
        dsm_loss(data.score_fn(sde), sde, x[:4], min_snr_gamma=5.0, likelihood_weighting=True)


def test_flow_matching_draws_logit_normal_times_when_asked():
    """t = sigmoid(n), n ~ N(0, 1), mapped into (eps, T): the logits of the times the network
    sees are standard normal (Kolmogorov-Smirnov), and uniform is the default."""
    from scipy import stats

    from sde_diffusion.processes.gaussian_paths import RectifiedFlowSDE
    from sde_diffusion.training.losses import flow_matching_loss

    sde, eps, seen = RectifiedFlowSDE(), 1e-5, {}

    def score_fn(x, t):
        seen["t"] = t.clone()
        return -x
    x = torch.zeros(20_000, 2, dtype=torch.float64)
    for kind in ("logit_normal", "uniform"):
        flow_matching_loss(score_fn, sde, x, time_sampling=kind, eps=eps, generator=torch.Generator().manual_seed(0))
        u = (seen["t"] - eps) / (sde.T - eps)
        seen[kind] = u
    assert stats.kstest(torch.logit(seen["logit_normal"]).numpy(), "norm").pvalue > 0.01
    assert stats.kstest(seen["uniform"].numpy(), "uniform").pvalue > 0.01
    assert stats.kstest(seen["logit_normal"].numpy(), "uniform").pvalue < 1e-6
    with pytest.raises(ValueError, match="time_sampling"):
        flow_matching_loss(score_fn, sde, x, time_sampling="beta")


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("target", ["v", "data"])
def test_prediction_loss_at_the_exact_score_has_its_closed_form(sde, target):
    """Data N(0, s0^2 I), exact score: the noise error's term D m^2 s0^2 / (2 v) (as for dsm_loss)
    times the squared factor that turns a noise error into a v error, (m^2 + s^2) / m, or into an
    x_0 error, s / m. Sub-VP has m^2 + s^2 != 1, so the v factor is not VP's 1 + 1/SNR there."""
    s0, dim, n, eps = 0.5, 3, 200_000, 1e-5
    data = GaussianMixture([1.0], torch.zeros(1, dim, dtype=torch.float64), [s0])
    x = data.sample(n, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    estimate = torch.stack([prediction_loss(data.score_fn(sde), sde, x[i:i + 1000], target=target, eps=eps,
                                            generator=generator) for i in range(0, n, 1000)])
    t = torch.linspace(eps, 1.0, 200_001, dtype=torch.float64)
    m, s = sde.marginal_coefs(t)
    factor = (m ** 2 + s ** 2) / m if target == "v" else s / m
    integrand = dim * m ** 2 * s0 ** 2 / (2 * (m ** 2 * s0 ** 2 + s ** 2)) * factor ** 2
    expected = torch.trapezoid(integrand, t) / (1.0 - eps)
    assert abs(estimate.mean() - expected) < 4 * estimate.std() / math.sqrt(len(estimate))


@pytest.mark.parametrize("target", ["v", "data"])
def test_min_snr_gamma_of_v_and_x0_losses_is_that_of_the_noise_loss_on_vp(target):
    """Hang et al.'s weights min(SNR, g) / (SNR + 1) for v and min(SNR, g) for x_0 are the noise
    loss's min(SNR, g) / SNR once the errors are converted (on VP): with the same times and noise
    the two losses agree term by term, for any score, not only in expectation."""
    sde, x = VPSDE(), torch.randn(256, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    def score(x_t, t):
        return -x_t + 0.3 * torch.sin(3 * x_t) * t[:, None]
    same = {"min_snr_gamma": 5.0, "reduce_mean": True}
    by_target = prediction_loss(score, sde, x, target=target, generator=torch.Generator().manual_seed(1), **same)
    by_noise = dsm_loss(score, sde, x, generator=torch.Generator().manual_seed(1), **same)
    assert torch.allclose(by_target, by_noise, rtol=1e-10)
    plain = prediction_loss(score, sde, x, target=target, reduce_mean=True, generator=torch.Generator().manual_seed(1))
    assert abs(plain - by_target) > 0.1 * by_target
    with pytest.raises(ValueError, match="target"):
        prediction_loss(score, sde, x, target="noise")
