"""The diffusers road through main.py: configs/published/diffusers_ddpm.py with
`--config.eval.reference_checkpoint=DIR` reads the shared pipeline folder, and --mode sample,
likelihood and study run on it. sample with per-image seeds is compared with diffusers' own DDIM
loop (its DDIMScheduler from the folder's scheduler config) from the same latents."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HANG_TIMEOUT_S
from sde_diffusion.app.image_seeds import seeded_latents
from sde_diffusion.published.diffusers import load_pipeline
from sde_diffusion.sampling import sample

diffusers = pytest.importorskip("diffusers", reason='the diffusers package is not installed (pip install -e ".[diffusers]")')
ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT.parent / "shared" / "fixtures" / "diffusers" / "ddpm_eps_linear"
pytestmark = pytest.mark.skipif(not PIPELINE.is_dir(), reason=f"diffusers fixture not found at {PIPELINE}")
TOLERANCE = 1e-4  # relative to the output's scale, as tests/test_diffusers.py


def main_py(workdir, mode, *flags):
    return subprocess.run([sys.executable, "main.py", "--config=configs/published/diffusers_ddpm.py",
                           f"--workdir={workdir}", f"--mode={mode}", f"--config.eval.reference_checkpoint={PIPELINE}",
                           "--config.data.image_size=16", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


def report_of(result) -> dict:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def diffusers_ddim(noise, steps):
    """diffusers' DDIM loop (eta 0, no clipping) on the folder's UNet and scheduler config."""
    unet = diffusers.UNet2DModel.from_pretrained(PIPELINE / "unet").eval()
    config = diffusers.DDPMScheduler.from_pretrained(PIPELINE / "scheduler").config
    scheduler = diffusers.DDIMScheduler.from_config(config, clip_sample=False)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def relative(ours, theirs) -> float:
    return float((ours.double() - theirs.double()).abs().max() / theirs.abs().max())


def test_main_py_samples_a_pipeline_as_diffusers_does(tmp_path):
    report = report_of(main_py(tmp_path / "run", "sample", "--config.sampling.seeds=0-3",
                               "--config.sampling.steps=10", "--config.sampling.batch_size=3"))
    assert re.fullmatch(r"reference_ddpm_eps_linear_[0-9a-f]{8}", report["step"]) and report["nfe"] == 10
    saved = torch.from_numpy(np.load(report["npz"])["model_space"])
    noise, _ = seeded_latents(range(4), (3, 16, 16))
    theirs = diffusers_ddim(noise, 10)
    pipeline = load_pipeline(PIPELINE)
    with torch.no_grad():  # the Python road from the same unit latents
        ours, _ = sample(pipeline.denoiser(), pipeline.sde, noise.shape, "ddim", steps=10,
                         schedule="diffusers_ddim_leading", latents=noise)
    # main.py and Python start from x_T = latent * sigma(T) (0.99998 here), diffusers from the latent
    print(f"main.py vs diffusers DDIM {relative(saved, theirs):.2e}, vs Python {relative(saved, ours):.2e}")
    assert relative(saved, ours) < 1e-6 and relative(saved, theirs) < TOLERANCE


def test_main_py_likelihood_and_study_on_a_pipeline(tmp_path):
    from test_sample_quality import _StandInInception
    from sde_diffusion.evaluation.sample_quality import INCEPTION_FILENAME

    images = np.random.default_rng(0).integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images)
    torch.jit.save(torch.jit.script(_StandInInception()), str(tmp_path / INCEPTION_FILENAME))
    data = ["--config.data.dataset=npz", f"--config.data.root={tmp_path / 'images.npz'}"]
    report = report_of(main_py(tmp_path / "run", "likelihood", *data, "--config.eval.bpd_num_images=2",
                               "--config.eval.bpd_rtol=1e-3", "--config.eval.bpd_atol=1e-3"))
    assert report["num"] == 2 and np.isfinite(report["mean"]) and report["mean"] > 0
    report = report_of(main_py(tmp_path / "run", "study", *data, "--config.study.num_samples=4",
                               "--config.study.samplers=('ddim schedule=diffusers_ddim_leading',)",
                               "--config.study.nfe=(4,)", "--config.study.reference=False",
                               f"--config.eval.inception_path={tmp_path / INCEPTION_FILENAME}"))
    assert re.fullmatch(r"reference_ddpm_eps_linear_[0-9a-f]{8}", report["step"]) and report["rows"] >= 1


def test_main_py_refuses_a_folder_that_does_not_fit(tmp_path):
    result = main_py(tmp_path / "run", "sample", "--config.model.beta_end=0.03")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "model.beta_end=0.03, the folder's 0.02" in lines[-1], result.stderr[-2000:]
    result = main_py(tmp_path / "run", "sample", "--config.model.name=ddpm")
    assert result.returncode == 1 and "model.name" in result.stderr.strip().splitlines()[-1]
