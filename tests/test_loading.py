"""The one-call loader (`app.loading.load_model`): a workdir by its stored config and EMA weights
(the latest or a chosen step), a score_sde_pytorch checkpoint, an EDM pickle and a diffusers folder
with their configs; each comes back ready for `sample` and gives what main.py, the reference code,
EDM's sampler or diffusers give."""
import json
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import torch

from sde_diffusion.app.config import ConfigError
from sde_diffusion.app.loading import load_model, read_config_file
from sde_diffusion.files.checkpoints import load_checkpoint, snapshot_path
from sde_diffusion.sampling import sample
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
requires_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}")
TOY = ["--config.training.n_iters=20", "--config.training.snapshot_freq=10", "--config.training.batch_size=64",
       "--config.training.snapshot_sampling=False", "--config.data.num_points=500", "--config.model.width=32",
       "--config.model.num_blocks=1", "--config.optim.warmup=0", "--config.sampling.method=ddim",
       "--config.sampling.steps=8"]


def main_py(*arguments):
    result = subprocess.run([sys.executable, "main.py", *arguments], cwd=ROOT, capture_output=True, text=True,
                            timeout=HANG_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("loading") / "toy"
    main_py("--config=configs/vp_toy.py", f"--workdir={workdir}", "--mode=train", *TOY)
    return workdir


def test_a_workdir_loads_from_its_config_json_with_the_ema_weights(toy_workdir):
    for step, expected_step in ((0, 20), (10, 10)):
        model = load_model(toy_workdir, step=step)
        shadow = load_checkpoint(snapshot_path(toy_workdir, expected_step), "cpu")["ema"]["shadow_params"]
        assert model.step == expected_step and model.shape == (2,) and model.num_classes == 0
        assert all(torch.equal(p, s) for p, s in zip(model.network.parameters(), shadow))
    assert model.spec.method == "ddim" and model.spec.steps == 8  # the stored config's sampler call


def test_the_loaded_model_samples_what_main_py_samples(toy_workdir):
    report = json.loads(main_py(f"--workdir={toy_workdir}", "--mode=sample",
                                "--config.sampling.num_samples=6").stdout.strip().splitlines()[-1])
    written = np.load(report["npz"])["samples"]
    model = load_model(toy_workdir)
    with torch.no_grad():
        x, nfe = sample(model.denoiser, model.sde, (6, *model.shape), model.spec,
                        generator=torch.Generator().manual_seed(42))
    assert nfe == report["nfe"] == 8
    np.testing.assert_allclose(model.to_data_space(x).numpy(), written, rtol=0, atol=1e-6)


def test_bad_sources_say_what_is_missing(toy_workdir, tmp_path):
    with pytest.raises(ValueError, match="not a workdir with a config.json; a published checkpoint needs its config"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="step=10 chooses among a workdir's checkpoints"):
        load_model(tmp_path / "model.pkl", ROOT / "configs" / "published" / "edm_cifar10.py", step=10)
    with pytest.raises(ValueError, match="config file .* does not exist"):
        load_model(tmp_path / "model.pkl", tmp_path / "nowhere.py")
    with pytest.raises(ConfigError, match="config.eval.reference_checkpoint: no such file"):
        load_model(tmp_path / "model.pth", ROOT / "configs" / "published" / "vp_cifar10_ddpmpp_continuous.py")


@requires_fixtures
def test_an_edm_pickle_samples_as_edms_sampler_does():
    config = read_config_file(ROOT / "configs" / "published" / "edm_cifar10.py")
    config.data.image_size = 16  # the fixture network's
    model = load_model(FIXTURES / "edm" / "edm_edm_ddpmpp.pkl", config)
    expected = np.load(FIXTURES / "edm" / "edm_edm_ddpmpp_edm_sampler.npz")
    latents = torch.from_numpy(expected["latents"])
    with torch.no_grad():
        x, nfe = sample(model.denoiser, model.sde, latents.shape, model.spec, latents=latents)
    theirs = torch.from_numpy(expected["heun18"])
    assert re.fullmatch(r"reference_edm_edm_ddpmpp_[0-9a-f]{8}", model.step) and nfe == 35
    assert float((x - theirs).abs().max() / theirs.abs().max()) < 1e-5
    # EDM's own sigmas (its eq. 5, rho 7, 18 steps), given as the grid: the same samples
    rho, low, high = 7.0, float(expected["sigma_min"]), float(expected["sigma_max"])
    sigmas = (high ** (1 / rho) + np.arange(18) / 17 * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    with torch.no_grad():
        own, nfe = sample(model.denoiser, model.sde, latents.shape, "heun", noise_levels=sigmas, latents=latents)
    assert nfe == 35 and float((own - theirs).abs().max() / theirs.abs().max()) < 1e-5


@requires_fixtures
def test_a_score_sde_checkpoint_gives_the_reference_networks_output():
    name = "ddpmpp_vp_cifar10_continuous"
    reference = ml_collections.ConfigDict(json.loads((FIXTURES / "reference" / f"{name}.json").read_text()))
    config = read_config_file(ROOT / "configs" / "published" / "vp_cifar10_ddpmpp_continuous.py")
    for field in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout"):
        config.model[field] = reference.model[field]
    config.data.image_size = reference.data.image_size  # the fixture's reduced sizes
    model = load_model(FIXTURES / "reference" / f"{name}.pth", config)
    expected = np.load(FIXTURES / "reference" / f"{name}.npz")
    with torch.no_grad():
        out = model.network(torch.from_numpy(expected["x"]), torch.from_numpy(expected["labels"]))
    assert float((out - torch.from_numpy(expected["out"])).abs().max()) < 1e-5
    assert type(model.sde).__name__ == "VPSDE" and model.shape == (3, reference.data.image_size, reference.data.image_size)


@requires_fixtures
def test_a_diffusers_folder_samples_as_diffusers_does():
    pytest.importorskip("diffusers")
    config = read_config_file(ROOT / "configs" / "published" / "diffusers_ddpm.py")
    config.data.image_size = 16  # the fixture pipeline's
    model = load_model(FIXTURES / "diffusers" / "ddpm_eps_linear", config)
    expected = np.load(FIXTURES / "diffusers" / "ddpm_eps_linear.npz")
    assert model.shape == (3, 16, 16) and re.fullmatch(r"reference_ddpm_eps_linear_[0-9a-f]{8}", model.step)
    noise, theirs = torch.from_numpy(expected["noise"]), torch.from_numpy(expected["final_ddim_10"])
    with torch.no_grad():  # DDIMScheduler's 10 steps on its "leading" timesteps, from the same noise
        x, nfe = sample(model.denoiser, model.sde, noise.shape, "ddim", steps=10, schedule="diffusers_ddim_leading",
                        latents=noise)
    assert nfe == 10 and float((x - theirs).abs().max() / theirs.abs().max()) < 1e-4  # as test_diffusers.py
