"""The step hook (sampling.registry.StepHook) every stepping sampler takes: where it is called,
with what, and that a hook which changes nothing changes nothing."""
import pytest
import torch

from sde_diffusion.processes.distributions import GaussianMixture
from sde_diffusion.sampling import SAMPLERS, SamplerSpec, parse_spec, sample
from sde_diffusion.sampling.registry import takes_step_hook
from sde_diffusion.processes.sdes import get_sde

MIXTURE = GaussianMixture([0.6, 0.4], [[1.0, -1.0], [-2.0, 0.5]], [[0.3, 0.5], [0.6, 0.2]])
STEPPING = ["ddim", "ddim eta=1", "heun", "heun churn=5", "dpm_solver++", "dpm_solver++ order=3 unipc=true",
            "dpm_solver++ eta=1", "pc", "pc predictor=euler_maruyama corrector=none"]


def test_which_samplers_take_a_hook():
    hooked = {name for name in SAMPLERS if takes_step_hook(name)}
    assert {"ddim", "heun", "dpm_solver++", "pc", "sde_solver"} <= hooked
    assert not hooked & {"ode", "adaptive_sde"}  # they pick their steps inside a solver


@pytest.mark.parametrize("text", STEPPING)
def test_a_hook_that_changes_nothing_changes_nothing(text):
    sde = get_sde("vpsde")
    spec = parse_spec(text + " steps=8")
    plain, nfe = sample(MIXTURE.score_fn(sde), sde, (64, 2), spec, generator=3)
    seen = []
    hooked, hooked_nfe = sample(MIXTURE.score_fn(sde), sde, (64, 2), spec, generator=3,
                                step_hook=lambda x, t, denoised: seen.append(t) or None)
    assert torch.equal(plain, hooked) and nfe == hooked_nfe
    assert len(seen) >= 8  # the start and every step but the last (more for PC's corrector)
    assert all(t.shape == (64,) for t in seen)


@pytest.mark.parametrize("text", ["ddim", "dpm_solver++", "heun"])
def test_the_hook_sees_the_grid_and_the_steps_data_prediction(text):
    sde = get_sde("vesde", sigma_min=0.01, sigma_max=10.0)
    spec = parse_spec(text + " steps=6")
    grid = spec.grid(sde)
    seen = []
    sample(MIXTURE.score_fn(sde), sde, (16, 2), spec, generator=0,
           step_hook=lambda x, t, denoised: seen.append((t[0].item(), denoised)) or None)
    # the start (no prediction yet), then the end of each step but the last, at the next grid time
    assert [t for t, _ in seen] == pytest.approx(grid.tolist()[:len(seen)], rel=1e-6)
    assert len(seen) == len(grid) and seen[0][1] is None
    assert all(denoised is not None and denoised.shape == (16, 2) for _, denoised in seen[1:])


def test_what_the_hook_returns_is_where_the_sampler_goes_on():
    """A hook that pins coordinate 0 to 0.25 at every step: the sampler's last step starts from
    a pinned x, so on this mixture (independent coordinates, per component) the output's
    coordinate 0 is close to 0.25 while coordinate 1 still varies."""
    sde = get_sde("vpsde")

    def pin(x, t, denoised):
        x = x.clone()
        x[:, 0] = 0.25 * sde.marginal_coefs(t)[0]
        return x
    x, _ = sample(MIXTURE.score_fn(sde), sde, (256, 2), "ddim", 20, generator=0, step_hook=pin)
    assert (x[:, 0] - 0.25).abs().max() < 0.05
    assert x[:, 1].std() > 0.3


def test_a_sampler_without_steps_refuses_a_hook():
    sde = get_sde("vpsde")
    with pytest.raises(ValueError, match="sampler 'ode' takes no step hook"):
        sample(MIXTURE.score_fn(sde), sde, (4, 2), SamplerSpec("ode"), step_hook=lambda x, t, d: x)


def test_sde_solver_with_a_hook_runs_interval_by_interval_on_the_same_path():
    """torchsde integrates the whole span in one call; with a hook it stops at each grid time, on
    the same Brownian path. Both are Euler-Maruyama chains of the grid's step size (the one-call
    chain's steps a relative 1e-4 longer, so its points drift off the grid by up to 1e-3 of the
    span): the samples agree to that drift, and the hooked run takes one score evaluation per
    interval (torchsde's shape check at each call's start is answered from the first step's)."""
    sde = get_sde("vpsde")
    spec = parse_spec("sde_solver steps=10")
    plain, nfe = sample(MIXTURE.score_fn(sde), sde, (64, 2), spec, generator=1, dtype=torch.float64)
    seen = []
    hooked, hooked_nfe = sample(MIXTURE.score_fn(sde), sde, (64, 2), spec, generator=1, dtype=torch.float64,
                                step_hook=lambda x, t, denoised: seen.append(t[0].item()) or None)
    assert (hooked - plain).abs().max() < 0.02  # measured 1e-3; the samples themselves spread over ~3
    assert hooked_nfe == 9 and nfe == 10
    assert seen == pytest.approx(spec.grid(sde).tolist()[:-1])
