"""Reflow's data set (Liu et al. 2023): `training.reflow_pairs` (noise, sample) pairs of the
teacher's deterministic sampler `training.reflow_sampler` (the probability-flow ODE by default),
stored in the workdir as `reflow_pairs/pairs_<k>.npz` files of CHUNK pairs each.

The noise of file k is drawn from its own generator (the run's seed and k), so the files do not
depend on which were written before; each is written whole or not at all (`atomic_write`). A stop
signal while generating (`signals.StopRequest`) ends the generation after the current batch: the
finished files stay, the rows of the unfinished one go to `pairs_<k>.partial.npz`, and the next
start makes only what is missing, the same pairs as an uninterrupted generation. Each file records
what made it (sampler, teacher, seed); files of another teacher or sampler are refused, not mixed in. The
pairs are in the model's space and carry a fingerprint, which the checkpoints store like that of
the user's own data, so a resume on changed pairs is refused.
"""
from __future__ import annotations

import copy
import hashlib
import io
import signal
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ArrayDataset, derive_seed
from ..files import checkpoints
from ..files.output_files import atomic_write
from ..sampling import parse_spec, sample
from ..training import distributed
from .progress import Progress, say
from .signals import StoppedBySignal

PAIRS_DIR = "reflow_pairs"
CHUNK = 4096  # pairs per file: what a stopped generation loses at most


class PairedData(ArrayDataset):
    """The teacher's samples (`data`, what a batch draws) and the noise each came from (`noise`)."""

    def __init__(self, samples: torch.Tensor, noise: torch.Tensor):
        super().__init__(samples, torch.zeros(samples.shape[0], dtype=torch.int64))
        self.noise = noise.to(torch.float32).contiguous()
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.data, self.noise):
            digest.update(array.numpy().tobytes())
        self.fingerprint = digest.hexdigest()


def _origin(config) -> str:
    """What makes the pairs: the sampler, the teacher and the seed."""
    training = config.training
    teacher = str(Path(training.get("init_from", "")).expanduser().resolve()) if training.get("init_from") else ""
    return f"{parse_spec(training.reflow_sampler).text} | teacher {teacher} | seed {config.seed}"


def _file(folder: Path, k: int, partial: bool = False) -> Path:
    """File k of the pairs, or the rows of it that a stopped generation made."""
    return folder / (f"pairs_{k}.partial.npz" if partial else f"pairs_{k}.npz")


def _chunks(count: int) -> list:
    return [(k, min(CHUNK, count - k * CHUNK)) for k in range((count + CHUNK - 1) // CHUNK)]


def _read(path: Path, rows: int, shape: tuple, origin: str, partial: bool = False):
    """(noise, samples) of a pairs file, or None when there is none; CheckpointError for a file
    of another origin or size. A `partial` file (a stopped generation's) holds the first rows'
    samples only, and its noise is None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            noise = None if partial else stored["noise"]
            samples, made_by = stored["samples"], str(stored["origin"])
    except (OSError, ValueError, KeyError) as error:
        raise checkpoints.CheckpointError(f"{path} is not a reflow pairs file ({error}); remove it") from error
    fits = samples.shape[1:] == shape and (samples.shape[0] < rows if partial else
                                           samples.shape[0] == rows and noise.shape == samples.shape)
    if made_by != origin or not fits:
        raise checkpoints.CheckpointError(f"{path} holds other pairs ({made_by}, {samples.shape[0]} rows) than this "
                                          f"run makes ({origin}, {rows} rows); use another workdir")
    return None if partial else torch.from_numpy(noise), torch.from_numpy(samples)


def _write(path: Path, origin: str, samples: torch.Tensor, noise=None) -> None:
    def write(temporary: str) -> None:
        buffer = io.BytesIO()
        arrays = {"samples": samples.numpy(), "origin": np.array(origin)}
        np.savez(buffer, **arrays, **({} if noise is None else {"noise": noise.numpy()}))
        Path(temporary).write_bytes(buffer.getvalue())
    atomic_write(path, write)


def _generate(teacher, plan, rows: int, k: int, done: torch.Tensor, made, stopping) -> tuple:
    """(noise of file k, the teacher's samples from it): the rows after those `done` (a stopped
    generation's), batch by batch until `stopping()`, so fewer than `rows` samples when stopped;
    `made(n)` after each batch of n. The batches start where an uninterrupted run's do."""
    config = plan.config
    noise = torch.randn((rows, *plan.data.shape), generator=torch.Generator().manual_seed(
        derive_seed(config.seed, "reflow", k)))
    batch = config.sampling.batch_size or rows
    samples = [done]
    with torch.no_grad():
        for start in range(len(done), rows, batch):
            if stopping():
                break
            z = noise[start:start + batch].to(plan.device)
            x, _ = sample(teacher, plan.sde, z.shape, parse_spec(config.training.reflow_sampler), z=z)
            samples.append(x.float().cpu())
            made(len(z))
    return noise, torch.cat(samples)


def _make_missing(run, folder: Path, missing: list, origin: str, stopping) -> None:
    """Generate the `missing` (k, rows) files from the run's current weights until `stopping()`:
    the unfinished file's rows are then kept as its partial file."""
    plan, config, shape = run.plan, run.config, tuple(run.plan.data.shape)
    kept = {k: _read(_file(folder, k, partial=True), rows, shape, origin, partial=True) for k, rows in missing}
    done = {k: read[1] if read else torch.empty((0, *shape)) for k, read in kept.items()}
    total, made = sum(rows for _, rows in missing), sum(len(rows) for rows in done.values())
    say("reflow: generating %d of %d (noise, sample) pairs with %s into %s", total - made,
        config.training.reflow_pairs, config.training.reflow_sampler, folder)
    teacher = plan.denoiser(copy.deepcopy(run.model).eval().requires_grad_(False))
    progress = Progress("reflow pairs", total, unit="pair", seconds=config.training.progress_seconds)

    def count(rows: int) -> None:
        nonlocal made
        made += rows
        progress.update(made)

    for k, rows in missing:
        noise, samples = _generate(teacher, plan, rows, k, done[k], count, stopping)
        if len(samples) < rows:
            if len(samples) > len(done[k]):
                _write(_file(folder, k, partial=True), origin, samples)
            say("reflow: stopped with %d of %d pairs made", made, total)
            progress.close()
            return
        _write(_file(folder, k), origin, samples, noise)
        _file(folder, k, partial=True).unlink(missing_ok=True)
    say("reflow: %d pairs made in %.1f s", total, progress.close())


def ensure_pairs(run, workdir: Path, generate: bool, stop=None) -> PairedData:
    """The workdir's pairs for the trainer's `run` (`train._Run`), generating the missing files
    from the run's current weights (the teacher's, `teacher.start_from_teacher`) when `generate`;
    otherwise (a resume) they must all be there. A signal recorded by `stop` (a
    `signals.StopRequest`) while generating raises StoppedBySignal on every rank."""
    plan, config = run.plan, run.config
    folder, origin, shape = Path(workdir) / PAIRS_DIR, _origin(config), tuple(plan.data.shape)
    chunks = _chunks(config.training.reflow_pairs)
    missing = [(k, rows) for k, rows in chunks if not _file(folder, k).is_file()]
    if missing and not generate:
        raise checkpoints.CheckpointError(f"{folder} lacks {len(missing)} of its {len(chunks)} reflow pairs files; "
                                          f"the checkpoints of this workdir were trained on them")
    stopping = (lambda: stop.signum is not None) if stop is not None else (lambda: False)
    if missing and distributed.is_main():
        _make_missing(run, folder, missing, origin, stopping)
    if stop is not None and generate and stop.on_any_rank(plan.device):  # the other ranks wait here
        stopped = StoppedBySignal(stop.signum or signal.SIGTERM, 0)
        if distributed.is_main():
            say("%s", stopped)
        raise stopped
    distributed.barrier()
    read = [_read(_file(folder, k), rows, shape, origin) for k, rows in chunks]
    return PairedData(torch.cat([samples for _, samples in read]), torch.cat([noise for noise, _ in read]))
