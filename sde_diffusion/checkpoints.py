"""Checkpoint files: atomic writes, safe loads, and where a run keeps them.

A workdir holds `checkpoints/checkpoint_<step>.pth` (kept, one per `snapshot_freq`) and
`checkpoints-meta/checkpoint.pth` (overwritten every `snapshot_freq_for_preemption` steps, the
point a preempted run resumes from), the reference code's layout. Every write goes to a temporary
file in the same folder, is fsync'ed and renamed over the target, so a crash mid-write leaves the
previous file intact. Every load uses `torch.load(weights_only=True)`: a checkpoint can hold
tensors, numbers, strings and containers, never code.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import torch

SNAPSHOT_DIR = "checkpoints"
PREEMPTION_PATH = Path("checkpoints-meta") / "checkpoint.pth"
_SNAPSHOT_NAME = re.compile(r"checkpoint_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line}") from error
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a sde_diffusion checkpoint (no 'step' entry)")
    return state


def snapshot_path(workdir, step: int) -> Path:
    return Path(workdir) / SNAPSHOT_DIR / f"checkpoint_{step}.pth"


def snapshot_steps(workdir) -> list:
    folder = Path(workdir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    matches = (_SNAPSHOT_NAME.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in matches if m)


def preemption_path(workdir) -> Path:
    return Path(workdir) / PREEMPTION_PATH


def latest_checkpoint(workdir, map_location="cpu") -> Optional[dict]:
    """The checkpoint with the highest step among the preemption file and the snapshots, or
    None for a workdir without checkpoints."""
    candidates = []
    if preemption_path(workdir).is_file():
        candidates.append(load_checkpoint(preemption_path(workdir), map_location))
    steps = snapshot_steps(workdir)
    if steps and (not candidates or steps[-1] > candidates[0]["step"]):
        candidates = [load_checkpoint(snapshot_path(workdir, steps[-1]), map_location)]
    return candidates[0] if candidates else None
