"""Plug-ins (`app.plugins`): a module outside the package registers a data set, a sampler, a
network, a loss and a process, and main.py trains, samples and studies with them by name
through `config.plugins`, with no file of the package edited."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A user's plug-in: one of each kind of component."""
import math

import torch
from torch import nn

from sde_diffusion.data.datasets import ArrayDataset, register_dataset
from sde_diffusion.processes.gaussian_paths import GaussianPathSDE
from sde_diffusion.training.losses import dsm_loss, register_loss
from sde_diffusion.models import register_model
from sde_diffusion.sampling import register_sampler
from sde_diffusion.processes.sdes import register_sde


@register_dataset("ring")  # points (the default facts): 2-D, no classes
def load_ring(split, *, num_points, seed, **ignored):
    generator = torch.Generator().manual_seed(seed + (split == "test"))
    n = num_points if split == "train" else num_points // 5
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    points = torch.stack([angle.cos(), angle.sin()], 1) * 2 + 0.05 * torch.randn(n, 2, generator=generator)
    return ArrayDataset(points, torch.zeros(n, dtype=torch.int64))


@register_model("tiny_mlp")
class TinyMLP(nn.Module):
    def __init__(self, data_dim: int = 2, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(data_dim + 1, width), nn.SiLU(), nn.Linear(width, data_dim))

    def forward(self, x, labels):
        return self.net(torch.cat([x, labels[:, None] / 1000], 1))


@register_sampler("plain_euler", schedule="uniform")
def plain_euler(denoiser, sde, x, timesteps, generator=None, *, step_hook=None):
    """Euler steps of the probability-flow ODE, written from the denoiser's score."""
    times = timesteps.tolist() + [0.0]
    for t, s in zip(times[:-1], times[1:]):
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype)
        drift, g = sde.sde(x, t_batch)
        x = x + (drift - 0.5 * g[:, None] ** 2 * denoiser.score(x, t_batch)) * (s - t)
    return x


@register_loss("half_dsm")
def half_dsm(model, sde, x, *, reduce_mean=False, generator=None, class_labels=None, shard=None):
    """Half the dsm loss: the same minimizer."""
    return 0.5 * dsm_loss(model, sde, x, reduce_mean=reduce_mean, generator=generator,
                          class_labels=class_labels, shard=shard)


@register_sde("sqrt_linear_vp")
class SqrtLinearVP(GaussianPathSDE):
    """alpha_bar(t) = 1 - t: alpha = sqrt(1 - t), sigma = sqrt(t), f = -1 / (2 (1 - t)), g^2 = -2 f."""

    def __init__(self, T: float = 0.999, N: int = 1000):
        super().__init__(N)
        self.T = float(T)

    def drift_coef(self, t):
        return -0.5 / (1 - t)

    def diffusion(self, t):
        return torch.sqrt(1 / (1 - t))

    def marginal_coefs(self, t):
        return torch.sqrt(1 - t), torch.sqrt(t)

    def time_of_log_snr(self, log_snr):
        return torch.sigmoid(-log_snr)

    def _init_kwargs(self):
        return {"T": self.T, "N": self.N}
'''


def main_py(workdir, plugin_dir, *flags, plugins="('ring_plugin',)"):
    env = dict(os.environ, PYTHONPATH=f"{plugin_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "main.py", "--config=configs/vp_toy.py", f"--workdir={workdir}",
               f"--config.plugins={plugins}", "--config.data.dataset=ring", "--config.model.name=tiny_mlp",
               "--config.training.loss=half_dsm", "--config.training.sde=sqrt_linear_vp",
               "--config.training.n_iters=30", "--config.training.batch_size=64",
               "--config.training.snapshot_freq=30", "--config.data.num_points=500",
               "--config.training.snapshot_sampling=False", "--config.sampling.method=plain_euler",
               "--config.sampling.steps=20", "--config.sampling.num_samples=64", "--config.eval.num_samples=64",
               "--config.study.samplers=('plain_euler', 'ddim')", "--config.study.nfe=(10,)",
               "--config.study.num_samples=64", "--config.study.reference_tol=0.001", *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S, env=env)


def test_a_plugin_registers_a_dataset_a_sampler_a_network_a_loss_and_a_process(tmp_path):
    (tmp_path / "ring_plugin.py").write_text(PLUGIN)
    workdir = tmp_path / "run"
    reports = {}
    for mode in ("train", "sample", "study"):
        result = main_py(workdir, tmp_path, f"--mode={mode}")
        assert result.returncode == 0, (mode, result.stderr[-2000:])
        if mode != "train":
            reports[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    assert reports["sample"]["nfe"] == 20 and "plain_euler_20steps" in reports["sample"]["npz"]
    samples = __import__("numpy").load(reports["sample"]["npz"])["samples"]
    assert samples.shape == (64, 2)
    rows = (workdir / "study").glob("*.csv")
    text = "".join(path.read_text() for path in rows)
    assert "plain_euler" in text and "ddim" in text
    config = json.loads((workdir / "config.json").read_text())
    assert config["plugins"] == ["ring_plugin"] and config["model"]["name"] == "tiny_mlp"
    assert (config["training"]["sde"], config["training"]["loss"]) == ("sqrt_linear_vp", "half_dsm")


def test_a_plugin_that_does_not_import_is_one_line(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("import no_such_module_here\n")
    result = main_py(tmp_path / "run", tmp_path, "--mode=train", plugins="('broken_plugin',)")
    assert result.returncode == 1 and not (tmp_path / "run").exists()
    assert result.stderr.strip() == ("error: config.plugins: cannot import 'broken_plugin': ModuleNotFoundError: "
                                     "No module named 'no_such_module_here'")
