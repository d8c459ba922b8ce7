"""Files written whole or not at all, a full disk named in one line, strict JSON, and the resume
rules of a workdir's stored config."""
import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_toy_config
from sde_diffusion.files import checkpoints
from sde_diffusion.app.train import train
from sde_diffusion.app.workdir_config import MAY_CHANGE_ON_RESUME, ConfigChangedError
from sde_diffusion.files.output_files import (atomic_write, finite_only, open_locked_temporary, to_json, write_text_atomic,
                                        written_together)


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_strict_json_turns_nonfinite_values_into_null_and_lists_them():
    record = {"step": 3, "loss": float("nan"), "scores": {"fd": float("inf"), "kd": 0.5}, "per": [1.0, -math.inf]}
    text = to_json(record)
    parsed = strict_loads(text)
    assert parsed == {"step": 3, "loss": None, "scores": {"fd": None, "kd": 0.5}, "per": [1.0, None],
                      "nonfinite": ["loss", "scores.fd", "per[1]"]}
    assert finite_only({"a": 1.0}) == {"a": 1.0}  # no flag when all is finite
    with pytest.raises(ValueError):
        strict_loads(json.dumps({"loss": float("nan")}))  # what Python writes by default


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "eval" / "eval_200.json"
    write_text_atomic(path, '{"good": 1}')

    def half_then_fail(temporary):
        with open(temporary, "w") as file:
            file.write('{"half')
        raise RuntimeError("the metric failed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{"good": 1}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["eval_200.json"]


def test_a_full_disk_is_named_in_one_line(tmp_path):
    path = tmp_path / "samples.npz"
    path.write_bytes(b"previous")

    def disk_full(temporary):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"^no space left on device writing {path}$") as caught:
        atomic_write(path, disk_full)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [path]


class _FullDisk:
    """A file object whose writes fail as on a full disk, after taking a few bytes."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints-meta" / "checkpoint.pth"
    checkpoints.save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}, "ema": {}})
    monkeypatch.setattr(checkpoints, "open", lambda *args, **kwargs: _FullDisk(open(*args, **kwargs)), raising=False)
    with pytest.raises(OSError, match=f"^no space left on device writing {path}$"):
        checkpoints.save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}, "ema": {}})
    assert checkpoints.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pth"]


def test_training_on_a_full_disk_stops_with_the_file_named(tmp_path, monkeypatch):
    config = tiny_toy_config(n_iters=20)
    train(config, tmp_path / "run")
    monkeypatch.setattr(checkpoints, "open", lambda *args, **kwargs: _FullDisk(open(*args, **kwargs)), raising=False)
    config.training.n_iters = 40
    with pytest.raises(OSError, match="no space left on device writing .*checkpoint.pth"):
        train(config, tmp_path / "run")
    assert checkpoints.latest_checkpoint(tmp_path / "run")["step"] == 20
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / "train.lock").exists()


def test_metrics_are_strict_json(tmp_path):
    train(tiny_toy_config(n_iters=20), tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines and all(isinstance(strict_loads(line)["step"], int) for line in lines)


def test_fields_that_may_change_on_resume_do_and_others_are_refused(tmp_path):
    workdir = tmp_path / "run"
    train(tiny_toy_config(n_iters=20), workdir)
    # how long, how often, how fast, the learning rate, the sampling settings: fine
    allowed = tiny_toy_config(n_iters=30, log_freq=5, snapshot_freq_for_preemption=5)
    allowed.optim.lr = 1e-4
    allowed.sampling.method = "ddim"
    allowed.threads = 1
    assert train(allowed, workdir)["step"] == 30
    assert {"training.n_iters", "optim.lr", "sampling", "threads"} <= set(MAY_CHANGE_ON_RESUME)
    # what the weights mean: refused, both values named, nothing written
    changed = tiny_toy_config(n_iters=40)
    changed.training.sde, changed.model.beta_max = "subvpsde", 10.0
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigChangedError, match=r"model.beta_max: 20.0 -> 10.0; training.sde: 'vpsde' -> 'subvpsde'"):
        train(changed, workdir)
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    # an expert may insist: loud, and the run goes on
    changed.training.resume_despite_changes = True
    assert train(changed, workdir)["step"] == 40


def test_written_together_renames_all_at_the_end_or_none(tmp_path):
    npz, png = tmp_path / "samples" / "s.npz", tmp_path / "samples" / "s.png"
    write_text_atomic(npz, "old npz")
    write_text_atomic(png, "old png")
    with pytest.raises(RuntimeError):
        with written_together():
            write_text_atomic(npz, "new npz")
            assert npz.read_text() == "old npz"  # held back until the block ends
            raise RuntimeError("the picture failed")
    assert (npz.read_text(), png.read_text()) == ("old npz", "old png")
    assert sorted(p.name for p in npz.parent.iterdir()) == ["s.npz", "s.png"]  # no temporary left
    with written_together():
        write_text_atomic(npz, "new npz")
        write_text_atomic(png, "new png")
    assert (npz.read_text(), png.read_text()) == ("new npz", "new png")
    assert sorted(p.name for p in npz.parent.iterdir()) == ["s.npz", "s.png"]


def test_cleanup_takes_what_no_writer_holds_and_never_a_file_being_written(tmp_path):
    from sde_diffusion.data.image_cache import remove_stale_temporaries
    left = tmp_path / ".eval_1.json.dead01.tmp"
    left.write_text("half")
    seen = []

    def write(temporary):  # another run's start-up cleanup, while this file is being written
        Path(temporary).write_text("half")
        seen.append(remove_stale_temporaries(tmp_path))
        Path(temporary).write_text("whole")

    atomic_write(tmp_path / "eval_2.json", write)
    assert seen == [[left]] and not left.exists()
    assert (tmp_path / "eval_2.json").read_text() == "whole"
    handle, held = open_locked_temporary(tmp_path / "samples.npz")
    try:
        assert remove_stale_temporaries(tmp_path) == [] and Path(held).exists()
    finally:
        os.close(handle)
    assert remove_stale_temporaries(tmp_path) == [Path(held)]


def test_a_signal_during_the_renames_waits_until_both_files_are_in_place(tmp_path, monkeypatch):
    import signal

    import sde_diffusion.files.output_files as output_files
    from sde_diffusion.app.signals import Interrupted, interrupted_by_signals
    replace, calls = os.replace, []

    def replace_then_signal(source, target):  # SIGTERM arrives between the two renames
        replace(source, target)
        calls.append(target)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # a handler would run at one of these bytecodes
                pass

    monkeypatch.setattr(output_files.os, "replace", replace_then_signal)
    npz, png = tmp_path / "s.npz", tmp_path / "s.png"
    with pytest.raises(Interrupted):
        with interrupted_by_signals():
            with written_together():
                write_text_atomic(npz, "new npz")
                write_text_atomic(png, "new png")
    assert (npz.read_text(), png.read_text()) == ("new npz", "new png") and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # interrupted_by_signals left them ignored
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_a_plain_open_gives(tmp_path, umask):
    """Written whole through a temporary file, yet with the permissions of open(path, "w") under
    the user's umask (0644 by default), not the temporary's 0600."""
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.json", "{}")
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 \
        == 0o666 & ~umask
