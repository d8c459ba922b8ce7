"""`main.py --mode inpaint / colorize` end to end on tiny models; bad input exits 1 with one line
and writes nothing."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.model.nf=32", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
        "--config.training.batch_size=8", "--config.training.n_iters=2", "--config.training.snapshot_freq=2",
        "--config.training.snapshot_sampling=False", "--config.sampling.steps=6",
        "--config.sampling.batch_size=4", "--config.controllable.num_images=6"]


def main_py(*args):
    command = [sys.executable, "main.py", "--config=configs/vp_digits.py", *TINY, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("inpaint") / "run"
    result = main_py(f"--workdir={workdir}", "--mode=train")
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_inpaint_mode_keeps_the_observed_pixels(workdir, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 1), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "images.npz", x=images)
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", f"--config.controllable.images={tmp_path / 'images.npz'}",
                     "--config.controllable.mask=center_square")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["num_images"] == 6 and report["nfe"] == 6  # vp_digits: Euler-Maruyama, no corrector
    saved = np.load(report["npz"])
    mask = saved["mask"][0]
    assert mask.shape == (16, 16) and mask.sum() == 16 * 16 - 8 * 8  # the centre 8x8 is the hole
    expected = images[..., 0] / 255
    np.testing.assert_allclose(saved["outputs"][:, 0][:, mask], expected[:, mask], atol=1e-6)
    assert not np.allclose(saved["outputs"][:, 0][:, ~mask], expected[:, ~mask], atol=0.05)
    npz = Path(report["npz"])  # named by the call: mask, conditioning, sampler and steps, inputs, seed
    assert npz.name.startswith("inpaint_2_center_square_replacement_pc_euler_maruyama_none_6steps_6x")
    assert npz.name.endswith("_seed42.npz")
    for suffix in (".png", "_inputs.png", "_outputs.png"):
        assert npz.with_name(npz.stem + suffix).stat().st_size > 500


def test_inpaint_mode_with_smc_particles(workdir, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images)
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", f"--config.controllable.images={tmp_path / 'images.npz'}",
                     "--config.controllable.conditioning=smc", "--config.controllable.particles=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # batch_size 4 chains = 1 image of 3 particles per batch; NFE per chain as for replacement
    assert report["num_images"] == 5 and report["nfe"] == 6 and report["conditioning"] == "smc"
    saved = np.load(report["npz"])
    mask = saved["mask"][0]
    assert saved["outputs"].shape == (5, 1, 16, 16) and not mask.all() and mask.any()
    np.testing.assert_allclose(saved["outputs"][:, 0][:, mask], images[:, 0][:, mask] / 255, atol=1e-6)
    assert Path(report["npz"]).name.startswith("inpaint_2_half_right_smc3_pc_euler_maruyama_none_6steps_5x")


def test_inpaint_mode_reads_a_folder_of_pngs_and_the_test_split(workdir, tmp_path):
    import matplotlib.pyplot as plt

    for k in range(3):
        plt.imsave(tmp_path / f"{k}.png", np.full((16, 16), k / 4), cmap="gray", vmin=0, vmax=1)
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", f"--config.controllable.images={tmp_path}",
                     "--config.controllable.mask=random_pixels:0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    saved = np.load(json.loads(result.stdout.strip().splitlines()[-1])["npz"])
    assert saved["outputs"].shape == (3, 1, 16, 16)
    mask = saved["mask"][0]
    np.testing.assert_allclose(saved["outputs"][2, 0][mask], 0.5, atol=2e-3)  # PNGs hold 8 bits
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", "--config.controllable.mask=half_left")
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(json.loads(result.stdout.strip().splitlines()[-1])["npz"])["outputs"].shape == (6, 1, 16, 16)


@pytest.mark.parametrize("method, nfe", [("ddim", 6), ("heun", 11), ("dpm_solver++", 6), ("sde_solver", 5)])
def test_inpaint_mode_with_every_stepping_sampler(workdir, tmp_path, method, nfe):
    """The replacement is a step hook: the fast samplers inpaint through main.py as PC does."""
    images = np.random.default_rng(2).integers(0, 256, size=(4, 1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images)
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", f"--config.controllable.images={tmp_path / 'images.npz'}",
                     "--config.controllable.mask=half_left", f"--config.sampling.method={method}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nfe"] == nfe and Path(report["npz"]).name.startswith(f"inpaint_2_half_left_replacement_{method}_")
    saved = np.load(report["npz"])
    mask = saved["mask"][0]
    np.testing.assert_allclose(saved["outputs"][:, 0][:, mask], images[:, 0][:, mask] / 255, atol=1e-6)
    assert np.isfinite(saved["outputs"]).all()


@pytest.mark.parametrize("args, message", [
    (["--config.sampling.method=ode"], "sampler 'ode' takes no step hook"),
    (["--config.sampling.method=ddim", "--config.controllable.conditioning=smc"], "not 'ddim'"),
])
def test_inpaint_refuses_samplers_that_cannot_take_the_observation(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", *args)
    assert result.returncode == 1 and message in result.stderr and "config.sampling.method" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not workdir.exists()


@pytest.mark.parametrize("mode, mask, expected", [
    ("inpaint", "random_pixels:0.5", "inpaint_7_random_pixels0.5_replacement_pc_euler_maruyama_none_6steps"),
    ("inpaint", "/some/folder/My mask.png", "inpaint_7_mask-My mask-"),
    ("colorize", "center_square", "colorize_7_replacement_pc_euler_maruyama_none_6steps"),
])
def test_output_names_carry_the_call_the_inputs_and_the_seed_and_no_folders(mode, mask, expected):
    from configs.vp_digits import get_config
    from sde_diffusion.app.controllable_modes import _output_name
    from sde_diffusion.app.plan import make_plan

    config = get_config()
    config.sampling.steps = 6
    config.controllable.mask = mask
    images, pixels = torch.zeros(3, 1, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool)
    name = _output_name(mode, 7, make_plan(config), images, pixels)
    assert name.startswith(expected) and name.endswith("_seed42") and "/" not in name
    others = [_output_name(mode, 7, make_plan(config), images[:2], pixels),  # another count
              _output_name(mode, 7, make_plan(config), images + 0.5, pixels)]  # other images
    config.seed = 1
    others.append(_output_name(mode, 7, make_plan(config), images, pixels))  # another seed
    config.seed, config.sampling.method = 42, "ddim"
    others.append(_output_name(mode, 7, make_plan(config), images, pixels))  # another sampler
    config.sampling.method, config.sampling.batch_size = "pc", 2
    others.append(_output_name(mode, 7, make_plan(config), images, pixels))  # 3 images in batches of 2
    if mask.endswith(".png"):
        others.append(_output_name(mode, 7, make_plan(config), images, ~pixels))  # another mask file
    assert len({name, *others}) == len(others) + 1


@pytest.mark.parametrize("args, message", [
    (["--config.controllable.images=/nonexistent/images.npz"], "config.controllable.images"),
    (["--config.controllable.mask=left_half"], "config.controllable.mask"),
    (["--config.controllable.mask=random_pixels:1.5"], "config.controllable.mask"),
    (["--config.controllable.num_images=0"], "config.controllable.num_images"),
    (["--config.controllable.conditioning=bayes"], "config.controllable.conditioning"),
    (["--config.controllable.conditioning=smc", "--config.controllable.particles=0"], "config.controllable.particles"),
    (["--config.controllable.conditioning=smc", "--config.sampling.predictor=none"], "config.sampling.predictor"),
])
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", *args)
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not workdir.exists()


def test_colorize_needs_rgb_data_and_images_of_the_right_size(workdir, tmp_path):
    result = main_py(f"--workdir={tmp_path / 'run'}", "--mode=colorize")
    assert result.returncode == 1 and "config.data.num_channels" in result.stderr
    np.savez(tmp_path / "big.npz", x=np.zeros((2, 1, 28, 28), dtype=np.uint8))
    before = sorted(p.name for p in workdir.iterdir())
    result = main_py(f"--workdir={workdir}", "--mode=inpaint", f"--config.controllable.images={tmp_path / 'big.npz'}")
    assert result.returncode == 1 and "28x28, not 16x16" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_colorize_mode_runs_on_an_untrained_rgb_model(tmp_path):
    """An untrained 3-channel network (no RGB data is bundled): the mode runs end to end on an
    .npz of float CHW images; gray preservation itself is proven on the oracle
    (test_controllable.py), since an untrained model's outputs are clamped to [0, 1]."""
    from configs.vp_digits import get_config
    from sde_diffusion.files.checkpoints import save_checkpoint, snapshot_path
    from sde_diffusion.app.config import build_model
    from sde_diffusion.training.ema import EMA

    rgb = ["--config.data.dataset=cifar10", "--config.data.num_channels=3"]
    config = get_config()
    config.data.dataset, config.data.num_channels = "cifar10", 3
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 32, (1,), ()
    model = build_model(config)
    workdir = tmp_path / "rgb"
    save_checkpoint(snapshot_path(workdir, 1), {"model": model.state_dict(),
                                                "ema": EMA(model, 0.9).state_dict(), "step": 1})
    colour = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    np.savez(tmp_path / "rgb.npz", images=colour.numpy())
    result = main_py(f"--workdir={workdir}", "--mode=colorize", f"--config.controllable.images={tmp_path / 'rgb.npz'}", *rgb)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = np.load(json.loads(result.stdout.strip().splitlines()[-1])["npz"])
    assert saved["outputs"].shape == (5, 3, 16, 16) and saved["inputs"].shape == (5, 1, 16, 16)
    np.testing.assert_allclose(saved["inputs"], colour.mean(1, keepdim=True).numpy(), atol=1e-6)
    assert np.isfinite(saved["outputs"]).all() and Path(saved_png(result)).stat().st_size > 500
    result = main_py(f"--workdir={workdir}", "--mode=colorize", f"--config.controllable.images={tmp_path / 'rgb.npz'}",
                     "--config.sampling.method=dpm_solver++", *rgb)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nfe"] == 6 and "_dpm_solver++_eta1_karras_6steps_" in report["npz"]  # conditioned: eta = 1; the noise family's grid
    assert np.load(report["npz"])["outputs"].shape == (5, 3, 16, 16)


def saved_png(result) -> str:
    return json.loads(result.stdout.strip().splitlines()[-1])["png"]
