import atexit
import os
import shutil
import tempfile

import torch

from sde_diffusion.app import cpu_share
from sde_diffusion.processes.distributions import GaussianMixture

# The limit on a test's child process (main.py, torchrun, a driver). It only turns a hang into a
# failure: far beyond any run's time on a 5x-loaded machine, so it never decides a result.
HANG_TIMEOUT_S = 1800
# What the package caches (classifier judges, image-folder caches) goes to a folder of this test
# session, never the user's ~/.cache; child processes (and xdist's workers) inherit it, and the
# process that made it removes it at the end.
if "SDE_DIFFUSION_CACHE" not in os.environ:
    os.environ["SDE_DIFFUSION_CACHE"] = tempfile.mkdtemp(prefix="sde_diffusion_cache_")
    atexit.register(shutil.rmtree, os.environ["SDE_DIFFUSION_CACHE"], ignore_errors=True)
# Under pytest-xdist (-n N) the workers share the cores: each worker and the main.py / torchrun
# processes it starts get their share of torch threads (OMP_NUM_THREADS, inherited), never the
# whole machine each, whose spinning threads would hold each other up (docs/threads.md).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _share = max(1, len(cpu_share.usable_cores()) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)


def mixture_2d() -> GaussianMixture:
    """Three well separated components of different widths and weights."""
    return GaussianMixture([0.2, 0.3, 0.5], [[-3.0, 0.0], [3.0, 2.0], [0.0, -3.0]], [0.3, 0.5, 0.8])


def mixture_32d() -> GaussianMixture:
    """The oracle's sharp case: stds 0.05-0.3 around means spread over several units."""
    generator = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(4, 32, generator=generator, dtype=torch.float64)
    return GaussianMixture([0.1, 0.2, 0.3, 0.4], means, [0.05, 0.1, 0.2, 0.3])



def tiny_toy_config(n_iters: int = 40, **training):
    """vp_toy shrunk to a run of a second or two: a small MLP on 1000 points of the gmm set."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("vp_toy", Path(__file__).resolve().parents[1] / "configs" / "vp_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.dataset, config.data.num_points = "gmm", 1000
    config.model.width, config.model.num_blocks = 32, 1
    config.training.update(batch_size=64, n_iters=n_iters, log_freq=10, eval_freq=10_000, snapshot_freq=n_iters,
                           snapshot_freq_for_preemption=10, snapshot_sampling=False)
    config.training.update(training)
    return config
