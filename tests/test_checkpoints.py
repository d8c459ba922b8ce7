"""Damaged and hostile checkpoint files: truncated, corrupt, foreign, mislabelled, or crafted
to run code when unpickled. Loading reports them and falls back to the newest good checkpoint,
or stops with a clear error; no code runs and no file is deleted or overwritten."""
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_toy_config
from sde_diffusion.files import checkpoints
from sde_diffusion.app.train import train
from conftest import HANG_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def tiny_state(step: int) -> dict:
    return {"step": step, "model": {"weight": torch.full((3,), float(step))}, "ema": {"shadow_params": []}}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # bytes in the middle of the zip archive's payload
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a checkpoint":
        torch.save({"weights": torch.ones(2)}, path)
    elif how == "wrong step":
        torch.save(tiny_state(7), path)


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["truncated", "flipped", "empty", "not a checkpoint", "wrong step"])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path, caplog, how):
    for step in (10, 20, 30):
        checkpoints.save_checkpoint(checkpoints.snapshot_path(tmp_path, step), tiny_state(step))
    damage(checkpoints.snapshot_path(tmp_path, 30), how)
    before = files_of(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sde_diffusion.files.checkpoints"):
        state = checkpoints.latest_checkpoint(tmp_path)
    assert state["step"] == 20 and torch.equal(state["model"]["weight"], torch.full((3,), 20.0))
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "checkpoint_30.pth" in warning, warning
    assert files_of(tmp_path) == before


def test_fallback_runs_through_preemption_file_and_snapshots_by_step(tmp_path, caplog):
    checkpoints.save_checkpoint(checkpoints.snapshot_path(tmp_path, 10), tiny_state(10))
    checkpoints.save_checkpoint(checkpoints.snapshot_path(tmp_path, 20), tiny_state(20))
    checkpoints.save_checkpoint(checkpoints.preemption_path(tmp_path), tiny_state(25))
    assert checkpoints.latest_checkpoint(tmp_path)["step"] == 25
    damage(checkpoints.preemption_path(tmp_path), "truncated")
    assert checkpoints.latest_checkpoint(tmp_path)["step"] == 20
    damage(checkpoints.snapshot_path(tmp_path, 20), "flipped")
    assert checkpoints.latest_checkpoint(tmp_path)["step"] == 10
    damage(checkpoints.snapshot_path(tmp_path, 10), "empty")
    with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint"):
        checkpoints.latest_checkpoint(tmp_path)
    assert checkpoints.latest_checkpoint(tmp_path / "nothing") is None


def test_a_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"step": 1, "model": {}, "ema": RunsCode(f"touch {marker}")}, path)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load would run it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="cannot load checkpoint"):
        checkpoints.load_checkpoint(path)
    assert not marker.exists()


def test_the_command_line_refuses_a_malicious_workdir_and_changes_nothing(tmp_path):
    """Only a malicious preemption file and a truncated snapshot: sampling stops with an error
    naming the problem, runs no code and leaves every file as it was."""
    workdir, marker = tmp_path / "run", tmp_path / "pwned"
    path = checkpoints.preemption_path(workdir)
    path.parent.mkdir(parents=True)
    torch.save({"step": 40, "model": RunsCode(f"touch {marker}"), "ema": {}}, path)
    checkpoints.save_checkpoint(checkpoints.snapshot_path(workdir, 20), tiny_state(20))
    damage(checkpoints.snapshot_path(workdir, 20), "truncated")
    before = files_of(workdir)
    for mode in ("sample", "train"):
        result = subprocess.run([sys.executable, "main.py", "--config=configs/vp_toy.py", f"--workdir={workdir}",
                                 f"--mode={mode}"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and lines[-1].startswith("error: no readable checkpoint"), result.stderr
        assert sum("checkpoint.pth" in line for line in lines[:-1]) == 1, result.stderr  # the warnings
        assert sum("checkpoint_20.pth" in line for line in lines[:-1]) == 1, result.stderr
        assert not marker.exists()
        assert files_of(workdir) == before


def test_training_resumes_past_a_corrupt_checkpoint_and_keeps_it(tmp_path):
    """The preemption file (step 30) and a snapshot of step 40 are damaged: training resumes from
    the snapshot the shorter run wrote at its end (step 30), ends equal to an uninterrupted run, replaces the (damaged)
    preemption file, and keeps the damaged snapshot under another name instead of overwriting it."""
    config = tiny_toy_config(n_iters=40, snapshot_freq=20)
    train(config, tmp_path / "straight")
    workdir = tmp_path / "damaged"
    train(tiny_toy_config(n_iters=30, snapshot_freq=20), workdir)
    damage(checkpoints.preemption_path(workdir), "flipped")
    checkpoints.save_checkpoint(checkpoints.snapshot_path(workdir, 40), tiny_state(40))
    damage(checkpoints.snapshot_path(workdir, 40), "truncated")
    damaged_bytes = checkpoints.snapshot_path(workdir, 40).read_bytes()
    train(config, workdir)
    mine = checkpoints.latest_checkpoint(workdir)
    theirs = checkpoints.latest_checkpoint(tmp_path / "straight")
    assert mine["step"] == theirs["step"] == 40
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), key
    assert checkpoints.preemption_path(workdir).exists()
    kept = checkpoints.snapshot_path(workdir, 40).with_name("checkpoint_40.pth.unreadable")
    assert kept.read_bytes() == damaged_bytes
    assert checkpoints.snapshot_steps(workdir) == [20, 30, 40]


def test_checkpoint_folder_holds_no_temporary_files_after_saves(tmp_path):
    for step in range(3):
        checkpoints.save_checkpoint(checkpoints.preemption_path(tmp_path), tiny_state(step))
    assert [p.name for p in checkpoints.preemption_path(tmp_path).parent.iterdir()] == ["checkpoint.pth"]
    assert checkpoints.load_checkpoint(checkpoints.preemption_path(tmp_path))["step"] == 2


class _Evaluates:
    def __reduce__(self):
        return eval, ("1 + 1",)


def _write_refused(path: Path, kind: str) -> None:
    """A file torch's weights-only reader refuses, each kind in another way."""
    if kind == "builtins.eval":
        torch.save({**tiny_state(5), "x": _Evaluates()}, path)
    elif kind == "numpy.dtypes.Complex64DType":  # a dtype outside the allowed ones, rebuilt by BUILD
        torch.save({**tiny_state(5), "x": np.dtype("complex64")}, path)
    elif kind == "posix.system":  # a plain pickle, not a torch zip file
        with open(path, "wb") as file:
            pickle.dump({"model": RunsCode("true")}, file, protocol=4)


@pytest.mark.parametrize("kind, says", [
    ("builtins.eval", "it names the Python global builtins.eval, which is not a tensor, number or container"),
    ("numpy.dtypes.Complex64DType", "it rebuilds a numpy.dtypes.Complex64DType from a stored state, which only "
                                    "tensors and containers may do in a checkpoint"),
    ("posix.system", "it is a plain pickle (instruction 149 is not one of a tensor file), naming the Python global "
                     "posix.system"),
])
def test_a_refusal_is_one_line_naming_what_was_refused_without_torchs_advice(tmp_path, kind, says):
    path = tmp_path / "checkpoint_5.pth"
    _write_refused(path, kind)
    with pytest.raises(checkpoints.CheckpointError) as refused:
        checkpoints.load_checkpoint(path)
    message = str(refused.value)
    assert message == f"cannot load checkpoint {path}: {says}: loading it would run code from the file, so it is refused"
    assert "weights_only" not in message and "Re-running" not in message


def test_the_newest_checkpoints_refusal_is_warned_the_same_way(tmp_path, caplog):
    checkpoints.save_checkpoint(checkpoints.snapshot_path(tmp_path, 10), tiny_state(10))
    _write_refused(checkpoints.snapshot_path(tmp_path, 20), "numpy.dtypes.Complex64DType")
    with caplog.at_level(logging.WARNING):
        assert checkpoints.latest_checkpoint(tmp_path)["step"] == 10
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and "numpy.dtypes.Complex64DType" in warned[0] and "weights_only" not in warned[0]


def test_the_trainer_sets_a_damaged_preemption_file_aside_before_replacing_it(tmp_path, caplog):
    workdir = tmp_path / "run"
    train(tiny_toy_config(n_iters=20, snapshot_freq=20), workdir)
    damaged = checkpoints.preemption_path(workdir)
    damage(damaged, "truncated")
    content = damaged.read_bytes()
    with caplog.at_level(logging.WARNING):
        train(tiny_toy_config(n_iters=30, snapshot_freq=20), workdir)
    moved = damaged.with_name("checkpoint.pth.unreadable")
    assert moved.read_bytes() == content
    assert any(f"moved the unreadable {damaged} to {moved}" in record.getMessage() for record in caplog.records)
    assert checkpoints.load_checkpoint(damaged)["step"] == 30
