"""Two processes on the CPU (gloo), started by torchrun as a user would: they train the same model
as one process with the same global batch, rank 0 alone writes, and likelihoods and samples
divided over the processes finish although the adaptive ODE solver takes a different number of
steps on each."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sde_diffusion.training import distributed
from sde_diffusion.files.checkpoints import load_checkpoint, snapshot_path
from sde_diffusion.app.config import build_sde
from sde_diffusion.training.losses import ddpm_loss, dsm_loss
from sde_diffusion.app.modes import run_likelihood
from sde_diffusion.app.train import train
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
SETTINGS = {"training.n_iters": STEPS, "training.batch_size": 64, "training.log_freq": 5,
            "training.eval_freq": 10, "training.snapshot_freq": STEPS,
            "training.snapshot_freq_for_preemption": 10, "training.snapshot_sampling": False,
            "data.dataset": "gmm", "data.num_points": 2000, "model.width": 64, "model.num_blocks": 2,
            "optim.warmup": 0, "eval.bpd_num_images": 40, "eval.batch_size": 40,
            "eval.bpd_rtol": 1e-4, "eval.bpd_atol": 1e-4}


def toy_config():
    spec = importlib.util.spec_from_file_location("vp_toy", ROOT / "configs" / "vp_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name, value in SETTINGS.items():
        section, field = name.split(".")
        config[section][field] = value
    return config


def torchrun(workdir: Path, mode: str, *extra: str) -> subprocess.CompletedProcess:
    flags = [f"--config.{name}={value}" for name, value in SETTINGS.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "main.py", "--config=configs/vp_toy.py", f"--workdir={workdir}", f"--mode={mode}", *flags, *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S, env=environment)


def _tails(stderr: str) -> str:
    """Where a rank failed and how it ended: the first and last lines of torchrun's stderr."""
    return stderr if len(stderr) < 6000 else stderr[:3000] + "\n[...]\n" + stderr[-3000:]


def files(workdir: Path) -> list:
    """Relative paths, with the event file's name (host, pid, time) reduced to its folder."""
    return sorted(str(path.relative_to(workdir).parent / "<events>") if "tfevents" in path.name
                  else str(path.relative_to(workdir)) for path in workdir.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
    train(toy_config(), one)
    result = torchrun(two, "train")
    assert result.returncode == 0, _tails(result.stderr)
    return one, two


def relative_difference(mine: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((mine - theirs).norm() / theirs.norm().clamp_min(1e-30)).item()


def test_two_processes_train_the_model_of_one_process_with_the_same_global_batch(runs):
    one, two = runs
    single, double = (load_checkpoint(snapshot_path(workdir, STEPS)) for workdir in (one, two))
    assert single["model"].keys() == double["model"].keys()  # no "module." prefix from DDP
    for name, value in single["model"].items():
        assert relative_difference(double["model"][name], value) < 1e-6, name
    for mine, theirs in zip(double["ema"]["shadow_params"], single["ema"]["shadow_params"]):
        assert relative_difference(mine, theirs) < 1e-6
    for mine, theirs in zip(double["optimizer"]["state"].values(), single["optimizer"]["state"].values()):
        assert relative_difference(mine["exp_avg_sq"], theirs["exp_avg_sq"]) < 1e-5
    # the same data order and random streams, exactly: the batch was drawn whole on every rank
    assert double["data_stream"] == single["data_stream"] == {"epoch": 0, "position": 64 * STEPS}
    assert torch.equal(double["rng"]["generator"], single["rng"]["generator"])
    assert torch.equal(double["rng"]["torch"], single["rng"]["torch"])
    # and moving: not two copies of an untrained model
    assert single["ema"]["num_updates"] == STEPS


def test_rank_zero_alone_writes_each_file_and_metric_once(runs):
    one, two = runs
    assert files(two) == files(one)
    single, double = ([json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
                      for workdir in (one, two))
    assert [sorted(row) for row in double] == [sorted(row) for row in single]
    assert [row["step"] for row in double] == [5, 10, 10, 15, 20, 20]
    for mine, theirs in zip(double, single):  # the logged loss is the mean over both processes
        for key in ("loss", "eval_loss"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5)


def test_likelihood_divided_over_two_processes_matches_one_process_and_does_not_hang(runs):
    _, two = runs
    result = torchrun(two, "likelihood")
    assert result.returncode == 0, _tails(result.stderr)
    (written,) = (two / "eval").glob(f"likelihood_{STEPS}_*.json")
    report = json.loads(written.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == report  # printed once, by rank 0
    # Each process solved the ODE for its own 20 points; the adaptive solver took a different
    # number of steps on each, and gathering only at the end kept that from hanging.
    first, second = report["nfe_per_process"]
    assert first != second and report["nfe"] == first + second and report["num"] == 40
    # One process solving the same two batches of 20 one after the other gets the same numbers.
    config = toy_config()
    config.eval.batch_size = 20
    alone = run_likelihood(config, two)
    assert (report["mean"], report["stderr"], report["nfe"]) == pytest.approx(
        (alone["mean"], alone["stderr"], alone["nfe"]), rel=1e-6)


def test_samples_divided_over_two_processes_gathered_by_rank_zero(runs):
    _, two = runs
    result = torchrun(two, "sample", "--config.sampling.method=ode", "--config.sampling.num_samples=11",
                      "--config.sampling.rtol=1e-3", "--config.sampling.atol=1e-3")
    assert result.returncode == 0, _tails(result.stderr)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    samples = np.load(report["npz"])["samples"]
    assert report["num_samples"] == 11 and samples.shape == (11, 2) and np.isfinite(samples).all()
    assert len(result.stdout.strip().splitlines()) == 1  # one report: rank 1 wrote nothing
    assert sorted(path.name for path in (two / "samples").iterdir()) == [
        f"samples_{STEPS}_ode_rtol0.001_atol0.001_11x_seed42.npz", f"samples_{STEPS}_ode_rtol0.001_atol0.001_11x_seed42.png"]


def test_two_processes_resume_from_the_same_checkpoint_and_stay_with_one_process(runs, tmp_path):
    one, two = (shutil.copytree(workdir, tmp_path / workdir.name) for workdir in runs)
    written = snapshot_path(two, STEPS).stat().st_mtime_ns
    result = torchrun(two, "train", f"--config.training.n_iters={STEPS + 10}")
    assert result.returncode == 0, _tails(result.stderr)
    assert ": cpu x 2 processes (torchrun), 1 threads, " in result.stderr  # rank 0's start line says both
    config = toy_config()
    config.training.n_iters = STEPS + 10
    train(config, one)
    single, double = (load_checkpoint(snapshot_path(workdir, STEPS + 10)) for workdir in (one, two))
    for name, value in single["model"].items():
        assert relative_difference(double["model"][name], value) < 1e-6, name
    assert double["data_stream"] == single["data_stream"] and double["ema"]["num_updates"] == STEPS + 10
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 10, 15, 20, 20, 25, 30, 30]
    # resumed, not restarted: step 20's snapshot was neither written again nor set aside
    assert snapshot_path(two, STEPS).stat().st_mtime_ns == written
    assert sorted(path.name for path in (two / "checkpoints").iterdir()) == [
        f"checkpoint_{STEPS}.pth", f"checkpoint_{STEPS + 10}.pth"]


@pytest.mark.parametrize("loss", [dsm_loss, ddpm_loss])
def test_blocks_of_the_global_batch_draw_the_noise_of_the_whole_batch(loss):
    """The shards' losses average to the one-process loss, and their gradients to its gradient:
    the noise and times each block uses are its rows of the global batch's draws."""
    sde = build_sde(toy_config())
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def score_fn(x_t, t):
        return -weight * x_t / (1 + t[:, None])

    whole = loss(score_fn, sde, x, generator=torch.Generator().manual_seed(5))
    (whole_grad,) = torch.autograd.grad(whole, weight)
    parts = [loss(score_fn, sde, x[4 * index:4 * index + 4], generator=torch.Generator().manual_seed(5),
                  shard=(index, 3)) for index in range(3)]
    parts_grad = torch.autograd.grad(sum(parts) / 3, weight)[0]
    assert (sum(parts) / 3).item() == pytest.approx(whole.item(), rel=1e-12)
    assert parts_grad.item() == pytest.approx(whole_grad.item(), rel=1e-12)
    # a block's draws differ from the first rows of a draw of its own size: that would repeat noise
    alone = loss(score_fn, sde, x[4:8], generator=torch.Generator().manual_seed(5))
    assert abs(alone.item() - parts[1].item()) > 1e-6


def test_shares_cover_every_item_once_and_the_batch_must_divide(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(distributed.share_of(11))
    assert shares == [(0, 4), (4, 4), (8, 3)]
    assert distributed.shard_rows(torch.arange(12)).tolist() == [8, 9, 10, 11]  # rank 2's block
    distributed.check_batch_divides(12)
    with pytest.raises(ValueError, match="training.batch_size 64 is the global batch"):
        distributed.check_batch_divides(64)
