"""What the trainer logs: scalars per step to metrics.jsonl and, when the tensorboard package is
installed, to TensorBoard; on resume both forget what the interrupted run logged after the
checkpoint, so each step is logged once. Rank 0 alone writes (`NoScalars` elsewhere)."""
from __future__ import annotations

import json
from pathlib import Path

from ..files.output_files import to_json


def forget_after(path: Path, step: int) -> None:
    """Drop the lines of metrics.jsonl past `step` (logged by a run killed after its last
    checkpoint, and about to be logged again) and a line cut short by the kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    temporary.replace(path)


class Scalars:
    """metrics.jsonl plus TensorBoard (optional dependency), continuing after `step`."""

    def __init__(self, workdir: Path, step: int):
        forget_after(workdir / "metrics.jsonl", step)
        self.file = open(workdir / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides the events of the interrupted run from step + 1 on
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=step + 1 if step else None)
        except ImportError:
            self.tensorboard = None

    def write(self, step: int, **scalars) -> None:
        self.file.write(to_json({"step": step, **scalars}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


class NoScalars:
    """What the processes other than rank 0 log: nothing."""

    def write(self, step: int, **scalars) -> None:
        pass

    def close(self) -> None:
        pass
