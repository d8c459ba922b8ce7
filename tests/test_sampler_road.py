"""One road from the config to the sampler: for every mode that samples (sample, eval, the
training snapshots, inpaint with replacement or SMC, colorize), the config's schedule options
(power, rho) change the grid the sampler receives and corrector_first reaches the pc sampler;
and every sampler called with only its name and a step count gets its declared defaults."""
import dataclasses
import functools

import numpy as np
import pytest
import torch
from conftest import mixture_32d, tiny_toy_config

from sde_diffusion.app import controllable_modes, modes
from sde_diffusion.files.checkpoints import save_checkpoint, snapshot_path
from sde_diffusion.app.config import build_model
from sde_diffusion.app.validation import validate_config
from sde_diffusion.training.ema import EMA
from sde_diffusion.sampling import SAMPLER_TRAITS, SAMPLERS, SCHEDULES, controllable, sample
from sde_diffusion.sampling.spec import SamplerSpec
from sde_diffusion.processes.denoiser import Denoiser
from sde_diffusion.processes.sdes import VESDE, VPSDE, get_sde
from sde_diffusion.app.train import train

VARIANTS = {  # config.sampling fields -> what the sampler must receive differently from "base"
    "base": dict(schedule="logsnr"),
    "power": dict(schedule="logsnr", power=0.5),
    "karras": dict(schedule="karras"),
    "rho": dict(schedule="karras", rho=3.0),
    "corrector_first": dict(schedule="logsnr", corrector_first=True),
}


@pytest.fixture
def received(monkeypatch):
    """Every call of the pc sampler (through the registry, inpainting or SMC): (grid, options)."""
    calls = []

    def spy(sampler):
        @functools.wraps(sampler)  # the same signature: the options are checked against it
        def recording(score_fn, sde, x, timesteps, generator=None, **options):
            calls.append((timesteps.clone(), options))
            return sampler(score_fn, sde, x, timesteps, generator, **options)
        return recording
    monkeypatch.setitem(SAMPLERS, "pc", spy(SAMPLERS["pc"]))
    monkeypatch.setattr(controllable, "smc_inpaint_sampler", spy(controllable.smc_inpaint_sampler))
    return calls


def assert_variants_reach_the_sampler(run, calls, variants=VARIANTS):
    """run(fields) runs a mode with config.sampling updated by `fields`."""
    seen = {}
    for name, fields in variants.items():
        calls.clear()
        run(fields)
        assert calls, name
        seen[name] = calls[-1]
    grid = {name: timesteps for name, (timesteps, _) in seen.items()}
    assert not torch.allclose(grid["power"], grid["base"])  # power warps the log-SNR grid
    assert not torch.allclose(grid["rho"], grid["karras"])  # rho moves the Karras grid
    if "corrector_first" in seen:
        assert seen["corrector_first"][1].get("corrector_first") is True
        assert "corrector_first" not in seen["base"][1]  # unset: the sampler's own default


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("road") / "toy"
    train(tiny_toy_config(20), workdir)
    return workdir


def toy_config(fields):
    config = tiny_toy_config(20)
    config.sampling.update(dict(num_samples=8, batch_size=8, steps=6, corrector="langevin"), **fields)
    config.eval.num_samples = 8
    validate_config(config, "sample")
    return config


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_the_config_reaches_the_sampler_in_sample_and_eval(toy_workdir, received, mode):
    run = {"sample": modes.run_sample, "eval": modes.run_eval}[mode]
    assert_variants_reach_the_sampler(lambda fields: run(toy_config(fields), toy_workdir), received)


def test_the_config_reaches_the_sampler_in_training_snapshots(tmp_path, received):
    def snapshot(fields):
        config = tiny_toy_config(4, snapshot_sampling=True, num_snapshot_samples=8)
        config.sampling.update(dict(steps=6, corrector="langevin"), **fields)
        train(config, tmp_path / str(len(list(tmp_path.iterdir()))))
    assert_variants_reach_the_sampler(snapshot, received)


@pytest.fixture(scope="module")
def image_workdirs(tmp_path_factory):
    """Untrained 1- and 3-channel image networks saved as checkpoints, and an .npz of images."""
    folder = tmp_path_factory.mktemp("images")
    for channels in (1, 3):
        config = image_config(channels, {})
        model = build_model(config)
        save_checkpoint(snapshot_path(folder / f"c{channels}", 1),
                        {"model": model.state_dict(), "ema": EMA(model, 0.9).state_dict(), "step": 1})
    for channels in (1, 3):
        images = torch.rand(2, channels, 16, 16, generator=torch.Generator().manual_seed(0))
        np.savez(folder / f"images{channels}.npz", images=images.numpy())
    return folder


def image_config(channels, fields, conditioning="replacement"):
    """vp_digits shrunk (3 channels: as for cifar10, whose data the mode never reads here)."""
    from configs.vp_digits import get_config

    config = get_config()
    if channels == 3:
        config.data.dataset = "cifar10"
    config.data.num_channels = channels
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 32, (1,), ()
    config.controllable.update(num_images=2, conditioning=conditioning, particles=2)
    config.sampling.update(dict(steps=4, batch_size=4, corrector="langevin"), **fields)
    return config


@pytest.mark.parametrize("mode, channels, conditioning", [("inpaint", 1, "replacement"), ("inpaint", 1, "smc"),
                                                          ("colorize", 3, "replacement")])
def test_the_config_reaches_the_sampler_in_inpaint_and_colorize(image_workdirs, received, mode, channels,
                                                               conditioning):
    def run(fields):
        config = image_config(channels, fields, conditioning)
        config.controllable.images = str(image_workdirs / f"images{channels}.npz")
        validate_config(config, mode)
        controllable_modes.run_controllable(config, image_workdirs / f"c{channels}", mode)
    variants = VARIANTS if conditioning == "replacement" else {
        name: fields for name, fields in VARIANTS.items() if name != "corrector_first"}  # not an SMC option
    assert_variants_reach_the_sampler(run, received, variants)


def test_every_sampler_declares_a_default_grid_that_exists():
    for name in SAMPLERS:
        traits = SAMPLER_TRAITS[name]
        assert traits.schedule in SCHEDULES and 0 < traits.end_noise_level < 1, name


def test_the_readmes_sampler_table_is_the_registrys():
    from pathlib import Path
    from sde_diffusion.sampling.__main__ import sampler_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert sampler_table() in readme, "regenerate it: python -m sde_diffusion.sampling\n" + sampler_table()


def test_a_sampler_named_with_a_step_count_gets_its_best_known_grid():
    """dpm_solver++ with only method and steps runs on its declared grid (log-SNR warped with
    power 0.65, eps 5e-4), not the uniform time grid it ran on before; an explicit schedule still
    wins. Component-std error at 10 NFE, 4000 samples, seeds 0 / 1: 0.013 / 0.018 by default,
    0.56 on the uniform grid."""
    mixture, sde = mixture_32d(), VPSDE()
    errors = {}
    for label, settings in (("default", {}), ("uniform", dict(schedule="uniform"))):
        x, nfe = sample(mixture.score_fn(sde), sde, (4000, 32), "dpm_solver++", steps=10, generator=0,
                        dtype=torch.float64, **settings)
        assert nfe == 10
        errors[label] = abs(mixture.sample_errors(x)["std"])
    assert errors["default"] < 0.05 and errors["uniform"] > 0.3, errors


@pytest.mark.parametrize("name", ["edm", "rectified_flow", "cosine_vp", "vpsde", "subvpsde", "vesde"])
def test_a_default_grid_ends_at_the_declared_noise_level_on_every_process(name):
    """A sampler declares its end as a noise level sigma/alpha, so the grid ends at the same
    resolution of the data whatever the process's clock: VP's at t = 1e-3 (0.010486) for heun and
    ddim, VP's at 5e-4 (0.0072449) for dpm_solver++; EDM's time is its noise level itself."""
    sde = get_sde(name)
    for method in ("dpm_solver++", "heun", "ddim"):
        declared = SAMPLER_TRAITS[method].end_noise_level
        end = SamplerSpec(method, steps=10).grid(sde)[-1]
        lowest = float(sde.noise_level(0.0))  # VE's sigma_min = 0.01 lies above dpm_solver++'s 0.0072449
        assert float(sde.noise_level(end)) == pytest.approx(max(declared, lowest), rel=1e-9), method
    assert SAMPLER_TRAITS["heun"].end_noise_level == pytest.approx(
        float(VPSDE().noise_level(1e-3)), rel=1e-15)  # the end Song et al. 2021 sample VP to
    edm_end = float(SamplerSpec("dpm_solver++", steps=10).grid(get_sde("edm"))[-1])
    assert edm_end == pytest.approx(0.0072449208, rel=1e-9) and edm_end > 0.002
    assert "eps=0.00724492" in SamplerSpec("dpm_solver++", steps=10).summary(get_sde("edm"))


def test_the_start_line_of_an_adaptive_call_names_no_grid():
    """An adaptive solver picks its own steps, so its summary says so instead of a step count
    and a grid it never runs on; a fixed-step call names both."""
    sde = get_sde("vpsde")
    assert SamplerSpec("ode", steps=500, options={"rtol": 1e-3}).summary(sde) == \
        "ode rtol=0.001, adaptive steps to eps=0.001"
    assert SamplerSpec("ddim", steps=20).summary(sde) == "ddim, 20 steps on the quadratic grid to eps=0.001"


def test_an_end_noise_level_below_what_the_process_reaches_ends_at_its_smallest():
    """VE never goes below sigma_min: an end level under it ends the grid at t = 0, where the
    noise level is sigma_min itself (EDM's VE networks end at their sigma_min 0.002 that way)."""
    ve = VESDE(sigma_min=0.002, sigma_max=80.0)
    grid = SamplerSpec("heun", steps=18, end_noise_level=0.002).grid(ve)
    assert float(grid[-1]) == 0.0 and float(ve.noise_level(grid[-1])) == pytest.approx(0.002, rel=1e-12)
    assert float(ve.noise_level(grid[0])) == pytest.approx(80.0, rel=1e-12)
    with pytest.raises(ValueError, match="eps .* or by end_noise_level"):
        SamplerSpec("heun", eps=1e-3, end_noise_level=0.002).resolved()


@pytest.mark.parametrize("spec, tag", [
    (SamplerSpec("dpm_solver++", steps=20), "dpm_solver++_20steps"),
    (SamplerSpec("dpm_solver++", steps=20, options={"order": 3, "unipc": True}), "dpm_solver++_order3_unipc_20steps"),
    (SamplerSpec("pc", steps=100, options={"predictor": "euler_maruyama", "corrector": "none"}),
     "pc_euler_maruyama_none_100steps"),
    (SamplerSpec("ddim", steps=50, options={"eta": 1.0}), "ddim_eta1_50steps"),
    # a named schedule without options is its own defaults (power 1), not dpm_solver++'s power 0.65
    (SamplerSpec("dpm_solver++", steps=20, schedule="logsnr"), "dpm_solver++_logsnr_20steps"),
    (SamplerSpec("dpm_solver++", steps=20, schedule="logsnr", schedule_options={"power": 0.65}),
     "dpm_solver++_20steps"),
    (SamplerSpec("dpm_solver++", steps=20, schedule="karras", eps=1e-3), "dpm_solver++_karras_eps0.001_20steps"),
    (SamplerSpec("ode"), "ode"),  # adaptive: the step count is not what it ran
    # numbers at the sampler's defaults are not named (snr 0.16 means nothing without a corrector)
    (SamplerSpec("pc", steps=100, options={"predictor": "ancestral", "corrector": "none", "snr": 0.16,
                                           "corrector_steps": 1}), "pc_ancestral_none_100steps"),
    (SamplerSpec("dpm_solver++", steps=20, options={"order": 2, "unipc": False}), "dpm_solver++_20steps"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_file_tags_tell_sampler_calls_apart(spec, tag):
    assert spec.file_tag(VPSDE()) == tag


def test_a_callers_own_grid_runs_as_given():
    """sample(timesteps=...) runs the sampler on exactly those times (the spec's own grid given
    back: the same samples), noise_levels=... on the times of those sigma/alpha, a grid that
    starts below T from pure noise of the marginal's std there; a grid that does not decrease
    within [0, T] is refused."""
    from sde_diffusion.processes.sdes import VESDE

    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    score = lambda x, t: -x / (1 + sde.marginal_prob(x, t)[1][:, None] ** 2)  # the exact score of N(0, I) data
    spec = SamplerSpec("heun", steps=12).resolved(sde=sde)
    default, _ = sample(score, sde, (64, 2), spec, generator=3)
    given, _ = sample(score, sde, (64, 2), "heun", timesteps=spec.grid(sde).tolist(), generator=3)
    torch.testing.assert_close(given, default, rtol=0, atol=0)
    levels = [5.0, 2.0, 0.5, 0.1]
    starts = []
    later, nfe = sample(score, sde, (20000, 2), "ddim", noise_levels=levels, generator=0,
                        step_hook=lambda x, t, d: starts.append(x.std().item()) if not starts else None)
    assert nfe == 4 and abs(starts[0] / 5.0 - 1) < 0.02  # one evaluation per grid point; std sigma_0 = 5
    for bad, message in (([0.5, 0.7], "strictly decreasing"), ([60.0, 1.0], "must lie in"), ([1.0], "at least 2")):
        with pytest.raises(ValueError, match=message):
            sample(score, sde, (4, 2), "ddim", timesteps=bad)


def _denoiser_of(family):
    """An exact oracle's Denoiser dressed as a network of `family`."""
    mixture, sde = mixture_32d(), VPSDE()
    oracle = Denoiser.from_score(mixture.score_fn(sde), sde)
    return Denoiser(sde, oracle, family=family), sde


@pytest.mark.parametrize("kind, dpm_solver_eta", [("noise", 0.5), ("score", 1.0)])
def test_a_noise_or_score_network_gets_its_familys_eta_unless_the_call_sets_one(kind, dpm_solver_eta):
    """Measured on the trained models (docs/benchmarks.md): VP-eps on Fashion-MNIST, VE NCSN++
    on the digits; both speckle with the deterministic solvers and not with these etas."""
    network, sde = _denoiser_of(kind)
    oracle = Denoiser(sde, network, family=None)
    shape = (64, 32)
    for method, eta in (("ddim", 1.0), ("dpm_solver++", dpm_solver_eta)):
        assert SAMPLER_TRAITS[method].family_options[kind]["eta"] == eta
        family, _ = sample(network, sde, shape, method, steps=8, generator=3)
        spelled, _ = sample(network, sde, shape, method, steps=8, generator=3, eta=eta)
        plain, _ = sample(network, sde, shape, method, steps=8, generator=3, eta=0.0)
        schedule, schedule_options = SAMPLER_TRAITS[method].grid_for(kind)  # the family's grid, if it declares one
        as_oracle, _ = sample(oracle, sde, shape, method, steps=8, generator=3, schedule=schedule,
                              schedule_options=schedule_options)
        assert torch.equal(family, spelled)
        assert torch.equal(plain, as_oracle)
        assert float((family - plain).abs().mean()) > 0.05  # fresh noise: another sample
    # UniPC's corrector is for eta = 0: the family's eta stays out of a call that sets it
    assert SamplerSpec("dpm_solver++", options={"unipc": True}).for_family("noise").options == {"unipc": True}
    assert SamplerSpec("ddim").for_family("edm").options == {}
    assert SamplerSpec("ddim", options={"eta": 0.2}).for_family("noise").options == {"eta": 0.2}


def test_dpm_solver_2m_steps_on_karras_grid_for_noise_and_velocity_and_uniform_log_snr_for_edm():
    """The declarations measured on the trained models (docs/benchmarks.md, "Defaults by
    family"): dpm_solver++ 2M on Karras' grid for noise and velocity networks, uniform in
    log-SNR for EDM networks (the one grid near the best on both EDM models), UniPC on its own
    log-SNR grid, and every other family (and the exact oracle, which has none) on the log-SNR
    grid at power 0.65; ddim on Karras' grid for EDM networks and (at eta 1) score networks."""
    sde = VPSDE()
    for family, grid, power in (("edm", "logsnr", 1.0), ("noise", "karras", None), ("velocity", "karras", None),
                                ("v", "logsnr", 0.65), (None, "logsnr", 0.65)):
        second_order = SamplerSpec("dpm_solver++", options={"order": 2}).resolved(sde=sde).for_family(family)
        assert second_order.schedule == grid and second_order.options.get("order") == 2, family
        assert second_order.schedule_options.get("power") == power, family
        corrected = SamplerSpec("dpm_solver++", options={"order": 3, "unipc": True}).resolved(sde=sde).for_family(family)
        assert corrected.schedule == "logsnr", family
    for family, grid in (("edm", "karras"), ("score", "karras"), ("noise", "quadratic"), (None, "quadratic")):
        assert SamplerSpec("ddim").resolved(sde=sde).for_family(family).schedule == grid, family
    assert SamplerSpec("dpm_solver++").resolved(sde=sde).for_family("score").schedule == "logsnr"
    edm, _ = _denoiser_of("edm")
    declared, nfe = sample(edm, sde, (64, 32), "dpm_solver++", steps=10, generator=0)
    spelled, _ = sample(edm, sde, (64, 32), "dpm_solver++", steps=10, generator=0, schedule="logsnr",
                        schedule_options={"power": 1.0})
    assert nfe == 10 and torch.equal(declared, spelled)


def test_a_velocity_network_runs_dpm_solver_as_unipc_unless_the_call_sets_the_order_or_an_eta():
    """Flow models (docs/benchmarks.md, "Defaults by family"): no grid for 2M came within 5% of
    the best fast sampler on both the digits and the Fashion-MNIST flow model, UniPC did. The
    declared options run exactly as spelled; a call naming the order gets that plain solver on
    the family's grid, and an eta (the call's, or a conditioned run's) the SDE variant, which
    the corrector cannot take."""
    velocity, sde = _denoiser_of("velocity")
    shape, run = (64, 32), functools.partial(sample, velocity, sde, method="dpm_solver++", steps=8, generator=3)
    declared, nfe = run(shape)
    assert nfe == 8 and torch.equal(declared, run(shape, order=3, unipc=True)[0])
    assert not torch.equal(declared, run(shape, order=3, unipc=True, schedule="karras")[0])
    resolve = lambda **options: SamplerSpec("dpm_solver++", options=options).resolved(sde=sde)  # noqa: E731
    for options, want, grid in (({}, {"order": 3, "unipc": True}, "logsnr"), ({"order": 2}, {"order": 2}, "karras"),
                                ({"eta": 0.5}, {"eta": 0.5}, "karras")):
        spec = resolve(**options).for_family("velocity")
        assert (spec.options, spec.schedule) == (want, grid), options
    conditioned = resolve().for_family("velocity", conditioned=True)
    assert (conditioned.options, conditioned.schedule) == ({"eta": 1.0}, "karras")
    from sde_diffusion.sampling.controllable import inpaint
    mask = torch.arange(32) < 16
    inpainted, nfe = inpaint(velocity, sde, declared, mask, spec=SamplerSpec("dpm_solver++", steps=8), generator=3)
    assert nfe == 8 and torch.equal(inpainted[:, :16], declared[:, :16]) and torch.isfinite(inpainted).all()
    spelled = SamplerSpec("dpm_solver++", steps=8, schedule="karras", options={"order": 2, "eta": 1.0})
    assert torch.equal(inpainted, inpaint(velocity, sde, declared, mask, spec=spelled, generator=3)[0])
    assert resolve().for_family("v").options == {}  # other families: the sampler's own 2M


def test_the_config_road_shows_the_familys_eta_in_the_summary_and_file_names():
    from sde_diffusion.app.config import sampler_spec
    config = tiny_toy_config()
    config.model.parameterization = "noise"
    config.sampling.method = "dpm_solver++"
    config.sampling.steps = 20
    spec = sampler_spec(config)
    assert spec.options["eta"] == 0.5 and "eta=0.5" in spec.summary() and "eta0.5" in spec.file_tag()
    config.model.parameterization = "data"
    assert "eta" not in sampler_spec(config).options


def test_a_study_runs_and_names_the_familys_options_and_measures_no_ode_distance_for_them():
    from sde_diffusion.evaluation.study import run_study
    noise, sde = _denoiser_of("noise")
    metric = lambda x: {"mean": float(x.mean())}  # noqa: E731
    rows = run_study(noise, sde, (16, 32), ["ddim", "ddim eta=0"], [4], metric, reference_tol=1e-3, progress=False)
    assert [row["sampler"] for row in rows] == ["ddim eta=1", "ddim eta=0"]
    assert rows[0]["status"] == rows[1]["status"] == "ok"
    assert "ode_rms" not in rows[0] and 0 < rows[1]["ode_rms"] < 100  # only the deterministic call has its ODE distance


def test_a_family_runs_on_its_declared_grid_unless_the_call_names_one(monkeypatch):
    traits = SAMPLER_TRAITS["dpm_solver++"]
    monkeypatch.setitem(SAMPLER_TRAITS, "dpm_solver++",
                        dataclasses.replace(traits, family_grids={"edm": ("karras", {"rho": 5.0})},
                                            overridden_by={**traits.overridden_by, "schedule": ("unipc",)}))
    (edm, sde), (v_network, _) = _denoiser_of("edm"), _denoiser_of("v")
    shape, run = (64, 32), functools.partial(sample, sde=sde, method="dpm_solver++", steps=8, generator=3)
    declared, spelled = run(edm, shape=shape)[0], run(edm, shape=shape, schedule="karras", schedule_options={"rho": 5.0})[0]
    assert torch.equal(declared, spelled)
    named = run(edm, shape=shape, schedule="logsnr", schedule_options=dict(traits.schedule_options))[0]
    assert torch.equal(named, run(v_network, shape=shape)[0])  # a named grid is the call's; other families keep the default
    assert float((declared - named).abs().mean()) > 1e-3
    # a call that sets a schedule option keeps the sampler's schedule
    spec = SamplerSpec("dpm_solver++", schedule_options={"power": 0.5}).resolved(sde=sde).for_family("edm")
    assert (spec.schedule, spec.schedule_options) == ("logsnr", {"power": 0.5})
    spec = SamplerSpec("dpm_solver++").resolved(sde=sde).for_family("edm")
    assert (spec.schedule, spec.schedule_options) == ("karras", {"rho": 5.0})
    assert "karras rho=5" in spec.summary(sde) and "karras" in spec.file_tag(sde)
    back = spec.for_family(None)  # declared again for the family named last
    assert (back.schedule, back.schedule_options) == (traits.schedule, dict(traits.schedule_options))
    corrected = SamplerSpec("dpm_solver++", options={"unipc": True}).resolved(sde=sde).for_family("edm")
    assert corrected.schedule == traits.schedule  # an option named in overridden_by["schedule"] keeps it out
    from sde_diffusion.evaluation.study import run_study
    rows = run_study(edm, sde, (16, 32), ["dpm_solver++", "dpm_solver++ schedule=logsnr"], [4],
                     lambda x: {"mean": float(x.mean())}, reference_ode=False, progress=False)
    assert [row["sampler"] for row in rows] == ["dpm_solver++ schedule=karras rho=5", "dpm_solver++ schedule=logsnr"]
    assert rows[0]["mean"] != rows[1]["mean"]
