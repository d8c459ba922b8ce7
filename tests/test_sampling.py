
import pytest
import torch

from sde_diffusion.sampling import (PREDICTORS, AffineStep, decode, encode,
                                    register_predictor, sample)
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d, mixture_32d

VP, SUBVP, VE = VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)

# (sde, method, steps, options, tolerances on weight / mean / std errors). The tolerances sit
# above the Monte Carlo noise of 10k samples (weights ~0.01, std ~0.02 in 2-D) plus each
# sampler's discretization error at that step count, measured and kept with some margin.
LOOSE = (0.03, 0.08, 0.06)
TIGHT = (0.02, 0.06, 0.04)
CASES_2D = [
    (VP, "pc", 1000, dict(predictor="euler_maruyama", corrector="none"), TIGHT),
    (SUBVP, "pc", 1000, dict(predictor="euler_maruyama", corrector="none"), TIGHT),
    (VE, "pc", 1000, dict(predictor="euler_maruyama", corrector="none"), TIGHT),
    (VP, "pc", 1000, dict(predictor="reverse_diffusion", corrector="none"), TIGHT),
    (SUBVP, "pc", 1000, dict(predictor="reverse_diffusion", corrector="none"), TIGHT),
    (VE, "pc", 1000, dict(predictor="reverse_diffusion", corrector="none"), TIGHT),
    (VP, "pc", 1000, dict(predictor="ancestral", corrector="none"), TIGHT),
    (VE, "pc", 1000, dict(predictor="ancestral", corrector="none"), TIGHT),
    (VP, "pc", 500, dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16), LOOSE),
    (SUBVP, "pc", 500, dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16), LOOSE),
    (VE, "pc", 500, dict(predictor="ancestral", corrector="langevin", snr=0.16, corrector_first=True), LOOSE),
    (VE, "pc", 500, dict(predictor="reverse_diffusion", corrector="ald", snr=0.16), LOOSE),
    # SMLD's sampler, annealed Langevin alone: unadjusted Langevin's step-size bias widens it.
    (VE, "pc", 200, dict(predictor="none", corrector="ald", snr=0.2, corrector_steps=5), (0.03, 0.08, 0.1)),
    (VP, "ode", 2, dict(), TIGHT),
    (SUBVP, "ode", 2, dict(solver="DOP853"), TIGHT),
    (VE, "ode", 2, dict(), TIGHT),
    (VP, "sde_solver", 500, dict(solver="euler"), TIGHT),
    (SUBVP, "sde_solver", 500, dict(solver="milstein"), TIGHT),
    (VE, "sde_solver", 100, dict(solver="srk"), TIGHT),
    (VP, "sde_solver", 100, dict(solver="euler", adaptive=True, rtol=1e-2, atol=1e-2), LOOSE),
]
CASES_32D = [
    (VP, "pc", 1000, dict(predictor="euler_maruyama", corrector="none"), TIGHT),
    (VP, "pc", 1000, dict(predictor="ancestral", corrector="none"), TIGHT),
    (SUBVP, "pc", 500, dict(predictor="reverse_diffusion", corrector="langevin", snr=0.05), LOOSE),
    (VE, "pc", 500, dict(predictor="reverse_diffusion", corrector="ald", snr=0.1), LOOSE),
    (VP, "ode", 2, dict(denoise=True), TIGHT),
    (VE, "sde_solver", 300, dict(solver="euler"), LOOSE),
]


def case_id(case):
    sde, method, steps, options = case[:4]
    return "-".join([type(sde).__name__, method, str(steps)] + [f"{k}={v}" for k, v in options.items()])


def check_samples(mixture, case, n=10000):
    sde, method, steps, options, (weight_tol, mean_tol, std_tol) = case
    x, nfe = sample(mixture.score_fn(sde), sde, (n, mixture.dim), method=method, steps=steps,
                    generator=1, dtype=torch.float64, **options)
    assert torch.isfinite(x).all()
    errors = mixture.sample_errors(x)
    assert errors["weight"] < weight_tol and errors["mean"] < mean_tol and errors["std"] < std_tol, errors
    return nfe


@pytest.mark.parametrize("case", CASES_2D, ids=case_id)
def test_samplers_match_2d_mixture(case):
    check_samples(mixture_2d(), case)


@pytest.mark.parametrize("case", CASES_32D, ids=case_id)
def test_samplers_match_32d_mixture(case):
    check_samples(mixture_32d(), case)


def test_nfe_is_counted_per_score_call():
    mixture, calls = mixture_2d(), []
    exact = mixture.score_fn(VP)
    def score(x, t):
        calls.append(1)
        return exact(x, t)
    _, nfe = sample(score, VP, (10, 2), method="pc", steps=50, predictor="reverse_diffusion",
                    corrector="langevin", corrector_steps=2, generator=0)
    assert nfe == len(calls) == 50 + 2 * 49  # no correction after the last step
    _, nfe = sample(score, VP, (10, 2), method="pc", steps=50, corrector_first=True, corrector_steps=2, generator=0)
    assert nfe == 3 * 50
    calls.clear()
    _, nfe = sample(score, VP, (10, 2), method="ode", generator=0)
    assert nfe == len(calls) > 10


def test_images_shape_and_float32():
    mixture = mixture_32d()
    x, _ = sample(mixture.score_fn(VP), VP, (2000, 2, 4, 4), method="pc", steps=300,
                  predictor="ancestral", corrector="none", generator=0)
    assert x.shape == (2000, 2, 4, 4) and x.dtype == torch.float32
    assert mixture.sample_errors(x)["weight"] < 0.05


def test_seeds_make_runs_reproducible():
    score = mixture_2d().score_fn(VP)
    a, _ = sample(score, VP, (100, 2), steps=20, generator=3)
    b, _ = sample(score, VP, (100, 2), steps=20, generator=torch.Generator().manual_seed(3))
    c, _ = sample(score, VP, (100, 2), steps=20, generator=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_few_step_ancestral_sampling_is_finite_and_converges():
    # DDPM's linear betas at N = 10 would reach beta = 2; the respaced chain stays in (0, 1).
    mixture, std_errors = mixture_2d(), []
    for steps in (10, 20, 50):
        x, nfe = sample(mixture.score_fn(VP), VPSDE(N=steps), (10000, 2), method="pc", steps=steps,
                        predictor="ancestral", corrector="none", generator=0)
        assert nfe == steps and torch.isfinite(x).all()
        errors = mixture.sample_errors(x)
        assert errors["weight"] < 0.1, errors
        std_errors.append(errors["std"])
    assert std_errors[0] < 0.6 and std_errors[1] < 0.7 * std_errors[0] and std_errors[2] < 0.5 * std_errors[1]


@pytest.mark.parametrize("sde", [VP, SUBVP, VE], ids=lambda s: type(s).__name__)
def test_ode_encode_decode_round_trip(sde):
    mixture = mixture_2d()
    x = mixture.sample(500, generator=torch.Generator().manual_seed(0))
    score = mixture.score_fn(sde)
    z, _ = encode(score, sde, x, rtol=1e-7, atol=1e-7)
    x_back, _ = decode(score, sde, z, rtol=1e-7, atol=1e-7)
    assert torch.allclose(x_back, x, atol=1e-4)
    # The latent is distributed as the prior: mean 0 and the prior's std.
    assert abs(z.std().item() / sde.prior_std - 1) < 0.1 and abs(z.mean().item()) < 0.1 * sde.prior_std
    # Decoding a latent through `sample` is the same map.
    x_sampled, _ = sample(score, sde, z.shape, method="ode", z=z, dtype=torch.float64, rtol=1e-7, atol=1e-7)
    assert torch.allclose(x_sampled, x, atol=1e-4)


def test_unknown_names_list_the_known_ones():
    score = mixture_2d().score_fn(VP)
    with pytest.raises(ValueError, match="unknown sampler 'heun2'; known: adaptive_sde, consistency, ddim, dpm_solver"):
        sample(score, VP, (4, 2), method="heun2")
    with pytest.raises(ValueError, match="unknown predictor 'euler'; known: ancestral, euler_maruyama"):
        sample(score, VP, (4, 2), predictor="euler", steps=5)
    with pytest.raises(ValueError, match="unknown corrector 'mala'; known: ald, langevin, none"):
        sample(score, VP, (4, 2), corrector="mala", steps=5)
    with pytest.raises(ValueError, match="ancestral sampling is not defined for SubVPSDE"):
        sample(score, SUBVP, (4, 2), predictor="ancestral", steps=5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sample(score, VP, (4, 2), steps=0)


def test_registering_a_predictor():
    @register_predictor("test_exponential_integrator")
    def exponential_integrator(sde, t, t_next, index):
        """Probability-flow ODE step with the drift frozen at t (a user extension)."""
        dt = t_next - t
        return AffineStep(1 + sde.drift_coef(t) * dt, -0.5 * sde.diffusion(t) ** 2 * dt, torch.zeros_like(t), t)
    try:
        assert "test_exponential_integrator" in PREDICTORS
        mixture = mixture_2d()
        x, _ = sample(mixture.score_fn(VP), VP, (5000, 2), steps=500, corrector="none",
                      predictor="test_exponential_integrator", generator=0)
        assert mixture.sample_errors(x)["weight"] < 0.03
    finally:
        del PREDICTORS["test_exponential_integrator"]
