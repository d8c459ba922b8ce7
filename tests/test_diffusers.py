"""diffusers pipelines (`sde_diffusion.published.diffusers`) and their process (`DiscreteVP`):
the shared fixture written by diffusers 0.42.1 is reproduced (the UNet's outputs, and DDIM,
DPM-Solver++(2M) and Euler at 10, 20 and 50 steps through `sample` called as docs/diffusers.md
says); the process is checked against closed forms; files that are not pipeline folders are
refused in one line naming what they look like."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sde_diffusion  # noqa: F401  (registers discrete_vp and the diffusers schedules)
from sde_diffusion.processes.discrete_vp import DiscreteVP
from sde_diffusion.published.diffusers import DiffusersError, load_pipeline
from sde_diffusion.published.diffusers_schedules import RULES, SPACINGS, diffusers_timesteps
from sde_diffusion.sampling import get_timesteps, sample

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "diffusers"
PIPELINE = FIXTURES / "ddpm_eps_linear"
requires_fixture = pytest.mark.skipif(not PIPELINE.is_dir(), reason=f"diffusers fixture not found at {PIPELINE}")
try:
    import diffusers  # noqa: F401
    HAVE_DIFFUSERS = True
except ImportError:
    HAVE_DIFFUSERS = False
requires_diffusers = pytest.mark.skipif(not HAVE_DIFFUSERS,
                                        reason='the diffusers package is not installed (pip install -e ".[diffusers]")')
TOLERANCE = 1e-4  # relative to the output's scale (its largest magnitude)

# diffusers scheduler (each with its class's default timestep spacing) -> this package's call
# (docs/diffusers.md): (method, options, schedule, whether the latent is scaled by sigma(T)).
CALLS = {
    "ddim": ("ddim", {}, "diffusers_ddim_leading", False),
    "dpmpp2m": ("dpm_solver++", {"order": 2}, "diffusers_dpm_linspace", False),
    "euler": ("ddim", {}, "diffusers_euler_linspace", True),
}


def relative_error(ours: torch.Tensor, theirs) -> float:
    theirs = torch.as_tensor(theirs)
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.fixture(scope="module")
def fixture_run():
    return load_pipeline(PIPELINE), {key: torch.from_numpy(value) for key, value in
                                     np.load(FIXTURES / "ddpm_eps_linear.npz").items()}


@requires_fixture
@requires_diffusers
def test_fixture_unet_outputs(fixture_run):
    pipeline, data = fixture_run
    assert pipeline.parameterization == "noise" and pipeline.sde.table_size == 1000
    with torch.no_grad():
        out = pipeline.network(data["x"], data["t_int"].float())
    assert relative_error(out, data["unet_out"]) < TOLERANCE


@requires_fixture
@requires_diffusers
@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("scheduler", sorted(CALLS))
def test_fixture_schedulers(fixture_run, scheduler, steps):
    pipeline, data = fixture_run
    method, options, schedule, scaled = CALLS[scheduler]
    z = data["noise"] * pipeline.sde.prior_std if scaled else data["noise"]
    with torch.no_grad():
        x, nfe = sample(pipeline.denoiser(), pipeline.sde, z.shape, method, steps=steps, schedule=schedule, z=z,
                        **options)
    assert nfe == steps
    assert relative_error(x, data[f"final_{scheduler}_{steps}"]) < TOLERANCE


# -- the process -----------------------------------------------------------------------------
@pytest.mark.parametrize("settings", [dict(), dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                      dict(beta_schedule="squaredcos_cap_v2")])
def test_discrete_vp_is_a_vp_process_through_its_table(settings):
    sde = DiscreteVP(**settings)
    index = torch.arange(sde.table_size)
    t = sde.table_time(index)
    alpha, sigma = sde.marginal_coefs(t)
    torch.testing.assert_close(alpha ** 2, sde.alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones_like(alpha))
    torch.testing.assert_close(sde.noise_labels(t), index.double())
    torch.testing.assert_close(sde.chain.time(index), t)
    assert torch.equal(sde.chain.step_index(t), index)
    # f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (Song et al. 2021, eq. 29),
    # by central differences inside the table's segments.
    mid = (torch.arange(1, 999, 37, dtype=torch.float64) + 0.4) / sde.table_size
    h = 1e-7
    a_plus, s_plus = sde.marginal_coefs(mid + h)
    a_minus, s_minus = sde.marginal_coefs(mid - h)
    _, s_mid = sde.marginal_coefs(mid)
    f = (torch.log(a_plus) - torch.log(a_minus)) / (2 * h)
    torch.testing.assert_close(sde.drift_coef(mid), f, rtol=1e-5, atol=0)
    g2 = (s_plus ** 2 - s_minus ** 2) / (2 * h) - 2 * f * s_mid ** 2
    torch.testing.assert_close(sde.diffusion(mid) ** 2, g2, rtol=1e-5, atol=0)
    # the log-SNR and its inverse
    grid = torch.linspace(0.0005, 1, 200, dtype=torch.float64)
    torch.testing.assert_close(sde.time_of_log_snr(sde.log_snr(grid)), grid)
    # DDPM's chain: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z keeps the variance 1
    f_i, g_i = sde.chain.coefs(index)
    torch.testing.assert_close((1 + f_i) ** 2 + g_i ** 2, torch.ones_like(f_i))
    torch.testing.assert_close(torch.cumprod((1 + f_i) ** 2, 0), sde.alphas_cumprod)


def test_linear_table_is_ddpm_in_float32():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    assert torch.equal(DiscreteVP().alphas_cumprod, torch.cumprod(1 - betas, 0).double())
    trained = DiscreteVP(N=4, trained_betas=[0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(trained.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504, 0.3024], dtype=torch.float64))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        DiscreteVP(N=2, trained_betas=[0.1, 1.0])


def test_respaced_chain_keeps_times_and_labels():
    sde = DiscreteVP()
    short = sde.with_steps(10)
    index = torch.arange(10)
    table = torch.round(torch.linspace(0, 999, 10, dtype=torch.float64)).long()
    torch.testing.assert_close(short.chain.time(index), sde.table_time(table))
    torch.testing.assert_close(short.noise_labels(short.chain.time(index)), table.double())
    f_i, g_i = short.chain.coefs(index)
    torch.testing.assert_close(torch.cumprod((1 + f_i) ** 2, 0), sde.alphas_cumprod[table])
    x, _ = sample(lambda x, t: -x, short, (3, 2), "pc", steps=10, predictor="ancestral", corrector="none",
                  generator=0)
    assert torch.isfinite(x).all()


# -- diffusers' timesteps ----------------------------------------------------------------------
def test_schedules_are_given_whole():
    sde = DiscreteVP()
    times = get_timesteps(sde, 10, 0.001, "diffusers_ddim_leading")
    assert torch.equal(times * 1000 - 1, torch.arange(900, -1, -100, dtype=torch.float64))  # not pinned to T
    assert diffusers_timesteps(1000, 10, "linspace", "dpm").tolist() == [999, 899, 799, 699, 599, 500, 400, 300,
                                                                          200, 100]
    with pytest.raises(ValueError, match="discrete_vp"):
        from sde_diffusion.processes.sdes import VPSDE
        get_timesteps(VPSDE(), 10, 0.001, "diffusers_ddim_leading")


@requires_diffusers
@pytest.mark.parametrize("steps", [1, 7, 10, 25, 50, 999])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("rule", RULES)
def test_timesteps_are_diffusers(rule, spacing, steps):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    kind = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}[rule]
    if rule == "dpm" and spacing != "trailing" and steps == 999:
        steps = 998  # dpm lays steps + 1 points
    for offset in (0, 1):
        scheduler = kind(timestep_spacing=spacing, steps_offset=offset)
        scheduler.set_timesteps(steps)
        ours = diffusers_timesteps(1000, steps, spacing, rule, offset)
        np.testing.assert_allclose(ours, scheduler.timesteps.double().numpy(), rtol=0, atol=1e-4)


# -- messages ------------------------------------------------------------------------------------
def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and "weights_only" not in text
    return text


def test_files_of_other_families_are_refused_in_one_line(tmp_path):
    hostile = tmp_path / "network.pkl"

    class Payload:  # a pickle naming posix.system, which would run a command if unpickled
        def __reduce__(self):
            import os
            return os.system, ("echo never",)
    hostile.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DiffusersError) as error:
        load_pipeline(hostile)
    assert "Python pickle" in _one_line(error) and "edm_" in str(error.value)
    checkpoint = tmp_path / "checkpoint_8.pth"
    torch.save({"model": {}, "step": 8}, checkpoint)
    with pytest.raises(DiffusersError) as error:
        load_pipeline(checkpoint)
    assert "score_sde" in _one_line(error)
    with pytest.raises(DiffusersError) as error:
        load_pipeline(tmp_path)
    assert "model_index.json" in _one_line(error)
    with pytest.raises(DiffusersError) as error:
        load_pipeline(tmp_path / "absent")
    assert "no such folder" in _one_line(error)


def _copy(tmp_path) -> Path:
    folder = tmp_path / "pipeline"
    shutil.copytree(PIPELINE, folder)
    return folder


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@requires_fixture
@pytest.mark.parametrize("part, changes, words", [
    ("model_index.json", dict(unet=["diffusers", "UNet2DConditionModel"]), "only pipelines with a UNet2DModel"),
    ("scheduler/scheduler_config.json", dict(prediction_type="flow"), "prediction_type 'flow'"),
    ("scheduler/scheduler_config.json", dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr"),
    ("scheduler/scheduler_config.json", dict(beta_schedule="exp"), "beta_schedule 'exp'"),
    ("scheduler/scheduler_config.json", dict(_class_name="FlowMatchEulerDiscreteScheduler"), "DDPM-family"),
])
def test_pipelines_not_read_here_are_refused_in_one_line(tmp_path, part, changes, words):
    folder = _copy(tmp_path)
    _edit(folder / part, **changes)
    with pytest.raises(DiffusersError) as error:
        load_pipeline(folder)
    assert words in _one_line(error)


@requires_fixture
def test_pickled_weights_are_not_read(tmp_path):
    folder = _copy(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # what save_pretrained(safe_serialization=False) names a pickle
    with pytest.raises(DiffusersError) as error:
        load_pipeline(folder)
    assert "is a pickle, which is not read" in _one_line(error)


@requires_fixture
@requires_diffusers
def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    folder = _copy(tmp_path)
    _edit(folder / "unet" / "config.json", block_out_channels=[32, 64, 128])
    with pytest.raises(DiffusersError) as error:
        load_pipeline(folder)
    assert "does not fit unet/config.json" in _one_line(error) and "has shape" in str(error.value)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DiffusersError) as error:
        load_pipeline(folder)
    assert "not a readable safetensors file" in _one_line(error)


@requires_fixture
@requires_diffusers
def test_published_config_describes_the_fixture(fixture_run):
    """configs/published/diffusers_ddpm.py, with the fixture's image size, is the fixture's process;
    a field that differs is named."""
    import importlib.util

    from sde_diffusion.published.diffusers import check_config
    from sde_diffusion.processes.sdes import get_sde

    path = Path(__file__).resolve().parents[1] / "configs" / "published" / "diffusers_ddpm.py"
    spec = importlib.util.spec_from_file_location("diffusers_ddpm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    pipeline, _ = fixture_run
    config.data.image_size = 16
    check_config(pipeline, config)
    built = get_sde(config.training.sde, N=config.model.num_scales, beta_schedule=config.model.beta_schedule,
                    beta_start=config.model.beta_start, beta_end=config.model.beta_end)
    assert torch.equal(built.alphas_cumprod, pipeline.sde.alphas_cumprod)
    config.model.beta_end, config.data.image_size = 0.012, 32
    with pytest.raises(DiffusersError) as error:
        check_config(pipeline, config)
    assert "model.beta_end=0.012, the folder's 0.02" in _one_line(error)
    assert "data.num_channels/image_size=3/32, the folder's 3/16" in str(error.value)
