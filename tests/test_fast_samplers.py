"""Time-step schedules and the few-step samplers (DDIM, Heun, DPM-Solver++) against the exact
oracle: the schedules' defining spacings, convergence orders against a tight-tolerance
probability-flow ODE solution from the same latent, and sample statistics against the mixture."""
import pytest
import torch

from sde_diffusion.sampling import SCHEDULES, get_timesteps, sample
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d, mixture_32d

VP, SUBVP, VE = VPSDE(), SubVPSDE(), VESDE(sigma_max=20.0)
SDES = [VP, SUBVP, VE]


def sde_id(sde):
    return type(sde).__name__


# -- schedules -------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=sde_id)
def test_log_snr_inverts(sde):
    t = torch.linspace(1e-5, 1.0, 200, dtype=torch.float64)
    assert torch.allclose(sde.time_of_log_snr(sde.log_snr(t)), t, rtol=0, atol=1e-12)
    mean_coef, std = sde.marginal_coefs(t)
    assert torch.allclose(sde.log_snr(t), torch.log(mean_coef ** 2 / std ** 2), atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=sde_id)
@pytest.mark.parametrize("name", sorted(name for name, schedule in SCHEDULES.items()
                                          if not getattr(schedule, "own_ends", False)))  # diffusers' own grids: test_diffusers
def test_schedules_run_from_T_to_eps_decreasing(sde, name):
    t = get_timesteps(sde, 12, 1e-3, name)
    assert t.shape == (12,) and t.dtype == torch.float64
    assert t[0].item() == sde.T and t[-1].item() == 1e-3
    assert (t[1:] < t[:-1]).all()


@pytest.mark.parametrize("sde", SDES, ids=sde_id)
def test_schedules_have_their_defining_spacing(sde):
    eps, n = 1e-3, 9
    # logsnr: equal steps in log-SNR.
    gaps = torch.diff(sde.log_snr(get_timesteps(sde, n, eps, "logsnr")))
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)
    # karras: equal steps in sigma^(1/rho), sigma = s(t) / m(t).
    rho = 7.0
    mean_coef, std = sde.marginal_coefs(get_timesteps(sde, n, eps, "karras", rho=rho))
    gaps = torch.diff((std / mean_coef) ** (1 / rho))
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)
    # logsnr with power p: equal steps in ((lambda - lambda_T) / (lambda_eps - lambda_T))^(1/p).
    power = 0.5
    lam = sde.log_snr(get_timesteps(sde, n, eps, "logsnr", power=power))
    gaps = torch.diff(((lam - lam[0]) / (lam[-1] - lam[0])) ** (1 / power))
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)
    assert torch.diff(lam)[0] > 2 * torch.diff(lam)[-1]  # long steps at low SNR, short at high
    # quadratic: equal steps in sqrt(t).
    gaps = torch.diff(get_timesteps(sde, n, eps, "quadratic").sqrt())
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)


def test_schedule_errors():
    with pytest.raises(ValueError, match="known"):
        get_timesteps(VP, 10, 1e-3, "cosine_nonexistent")
    with pytest.raises(ValueError, match="positive noise level at eps"):
        get_timesteps(VP, 10, 0.0, "logsnr")
    with pytest.raises(ValueError, match="rho"):
        get_timesteps(VP, 10, 1e-3, "karras", rho=0.0)
    with pytest.raises(ValueError, match="power"):
        get_timesteps(VP, 10, 1e-3, "logsnr", power=-1.0)


# -- convergence against the probability-flow ODE ----------------------------------------------
def ode_reference(mixture, sde, z):
    """The ODE from T to eps at tolerance 1e-10, then Tweedie's x0 at eps: exactly what the
    fast samplers approximate (their last step returns x0(x, eps))."""
    x, _ = sample(mixture.score_fn(sde), sde, z.shape, "ode", z=z, dtype=torch.float64,
                  rtol=1e-10, atol=1e-10, denoise=True, eps=1e-3)  # the grids' end below
    return x


def median_distance(x, y):
    # The median over samples: a trajectory that ends in another component (possible near
    # decision boundaries at coarse steps) would dominate a mean and hide the order.
    return (x - y).pow(2).sum(1).sqrt().median().item()


@pytest.fixture(scope="module")
def latent_and_reference():
    mixture = mixture_32d()
    z = VP.prior_sampling((400, mixture.dim), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return mixture, z, ode_reference(mixture, VP, z)


# (method, options, expected error ratio when the step count doubles (40 -> 80 -> 160 NFE),
# bound on the median distance at 160 NFE: measured 0.019, 3.2e-4, 2.4e-3 and 1.0e-4, kept with margin)
ORDERS = [
    ("ddim", {}, 2.0, 0.03),                     # first order
    ("dpm_solver++", dict(order=1), 2.0, 0.03),  # is DDIM
    ("dpm_solver++", dict(order=2), 4.0, 6e-4),
    ("heun", {}, 4.0, 4e-3),
    # Third order per step, but its first (first-order) step leaves an O(h^2) error, so the
    # global ratio falls to 4 at fine grids; it is still the most accurate at these counts.
    ("dpm_solver++", dict(order=3), 4.0, 2e-4),
    # The corrector raises the order by one at no extra NFE (measured ratios 4.0 and 8.2; at
    # 160 NFE 6.7e-4 and 2.9e-5) and lifts the third-order solver to a true third order (8.4).
    ("dpm_solver++", dict(order=1, unipc=True), 4.0, 1.5e-3),
    ("dpm_solver++", dict(order=2, unipc=True), 8.0, 6e-5),
    ("dpm_solver++", dict(order=3, unipc=True), 8.0, 1.5e-5),
]


@pytest.mark.parametrize("method,options,ratio,bound", ORDERS, ids=[f"{m}-{o}" for m, o, _, _ in ORDERS])
def test_deterministic_samplers_converge_to_the_ode_solution_at_their_order(latent_and_reference, method,
                                                                             options, ratio, bound):
    mixture, z, reference = latent_and_reference
    errors = []
    for nfe_budget in (10, 20, 40, 80, 160):
        grid_steps = nfe_budget // 2 if method == "heun" else nfe_budget
        x, nfe = sample(mixture.score_fn(VP), VP, z.shape, method, steps=grid_steps, z=z,
                        dtype=torch.float64, schedule="logsnr", eps=1e-3, **options)  # the reference's eps
        assert nfe == (2 * grid_steps - 1 if method == "heun" else grid_steps)
        errors.append(median_distance(x, reference))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors  # falls as steps rise
    for coarse, fine in zip(errors[2:], errors[3:]):
        assert 0.8 * ratio < coarse / fine < 1.3 * ratio, errors
    assert errors[-1] < bound, errors


def test_dpm_solver_3m_beats_2m_and_ddim_at_modest_steps(latent_and_reference):
    mixture, z, reference = latent_and_reference
    errors = {}
    for order in (1, 2, 3):
        x, _ = sample(mixture.score_fn(VP), VP, z.shape, "dpm_solver++", steps=40, z=z,
                      dtype=torch.float64, schedule="logsnr", eps=1e-3, order=order)
        errors[order] = median_distance(x, reference)
    assert errors[3] < 0.6 * errors[2] < 0.6 * 0.2 * errors[1], errors


@pytest.mark.parametrize("sde", SDES, ids=sde_id)
@pytest.mark.parametrize("method,options", [("ddim", {}), ("heun", {}), ("dpm_solver++", dict(order=2)),
                                            ("dpm_solver++", dict(order=3))])
def test_every_sde_reaches_the_ode_solution(sde, method, options):
    mixture = mixture_2d()
    z = sde.prior_sampling((300, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = ode_reference(mixture, sde, z)
    x, _ = sample(mixture.score_fn(sde), sde, z.shape, method, steps=200, z=z, dtype=torch.float64,
                  schedule="logsnr", eps=1e-3, **options)
    tolerance = 0.05 if method == "ddim" else 2e-3
    assert median_distance(x, reference) < tolerance


# -- distributions -----------------------------------------------------------------------------
# (sde, method, steps, options, tolerances on weight / mean / std errors): stochastic and
# deterministic few-step samplers against the mixture, 10k samples (Monte Carlo noise:
# weights ~0.01, means ~0.03 of a std, stds ~0.02 in 2-D; measured with two seeds: at most 0.017,
# 0.053 and 0.029 here).
TOL = (0.03, 0.08, 0.05)
CASES = [
    (VP, "ddim", 250, dict(eta=0.0), TOL),
    (VP, "ddim", 200, dict(eta=1.0), TOL),
    (VE, "ddim", 200, dict(eta=1.0), TOL),
    (SUBVP, "dpm_solver++", 50, dict(order=2), TOL),
    (VE, "dpm_solver++", 30, dict(order=3), TOL),
    (VP, "dpm_solver++", 50, dict(order=2, eta=1.0), TOL),
    (VP, "heun", 40, {}, TOL),
    (VE, "dpm_solver++", 20, dict(order=3, unipc=True), TOL),
    (VE, "heun", 60, dict(churn=20.0), (0.03, 0.08, 0.06)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{type(c[0]).__name__}-{c[1]}-{c[2]}-{c[3]}")
def test_fast_samplers_match_the_2d_mixture(case):
    sde, method, steps, options, (weight_tol, mean_tol, std_tol) = case
    mixture = mixture_2d()
    x, _ = sample(mixture.score_fn(sde), sde, (10000, 2), method, steps=steps, generator=2,
                  dtype=torch.float64, schedule="logsnr", **options)
    errors = mixture.sample_errors(x)
    assert errors["weight"] < weight_tol and errors["mean"] < mean_tol and errors["std"] < std_tol, errors


def test_ddim_eta_one_is_stochastic_and_eta_zero_is_not():
    mixture = mixture_2d()
    z = VP.prior_sampling((50, 2), generator=torch.Generator().manual_seed(0))
    runs = [sample(mixture.score_fn(VP), VP, z.shape, "ddim", steps=20, z=z, generator=seed, eta=eta)[0]
            for eta in (0.0, 1.0) for seed in (0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[2], runs[3])


def test_fast_sampler_option_errors():
    mixture = mixture_2d()
    with pytest.raises(ValueError, match="corrector"):
        sample(mixture.score_fn(VP), VP, (4, 2), "dpm_solver++", steps=5, eta=1.0, unipc=True)
    with pytest.raises(ValueError, match="order"):
        sample(mixture.score_fn(VP), VP, (4, 2), "dpm_solver++", steps=5, order=4)
    with pytest.raises(ValueError, match="eta"):
        sample(mixture.score_fn(VP), VP, (4, 2), "ddim", steps=5, eta=-1.0)


def test_fast_samplers_keep_image_shapes():
    def score(x, t):
        return -x
    for method in ("ddim", "heun", "dpm_solver++"):
        x, _ = sample(score, VP, (3, 1, 4, 4), method, steps=4, generator=0)
        assert x.shape == (3, 1, 4, 4) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_log_snr_power_below_one_helps_few_step_samplers_on_narrow_modes():
    # The 32-D mixture's narrowest component (std 0.05) resolves only at high SNR: a grid warped
    # towards high SNR (power < 1) beats the uniform log-SNR grid at 10 NFE several times over
    # (measured on 10000 samples: component-std error 0.05 against 0.23).
    mixture = mixture_32d()
    errors = {}
    for power in (1.0, 0.65):
        x, nfe = sample(mixture.score_fn(VP), VP, (4000, 32), "dpm_solver++", steps=10, generator=0,
                        dtype=torch.float64, schedule="logsnr", schedule_options={"power": power}, order=3,
                        unipc=True)
        assert nfe == 10
        errors[power] = mixture.sample_errors(x)["std"]
    assert errors[0.65] < 0.1 < 0.15 < errors[1.0], errors
