"""Checkpoint files: atomic writes, safe loads, fallback past damaged files, and where a run
keeps them.

A workdir holds `checkpoints/checkpoint_<step>.pth` (kept, one per `snapshot_freq`) and
`checkpoints-meta/checkpoint.pth` (replaced every `snapshot_freq_for_preemption` steps, the
point a preempted run resumes from), the reference code's layout. Every write goes to a temporary
file in the same folder, is fsync'ed, renamed over the target, and the folder is fsync'ed, so a
crash at any moment leaves either the previous file or the new one, never a mix. Every load uses
`torch.load(weights_only=True)`: a checkpoint can hold tensors, numbers, strings and containers,
never code; a file crafted to run code on unpickling fails to load instead.

Each file carries a digest of its contents (`DIGEST_KEY`), checked at load: torch's zip reader
notices a truncated file but not flipped bytes inside a tensor, which would otherwise resume
training from silently wrong weights.

`latest_checkpoint` takes the highest step that loads: a truncated, corrupt, unsafe or foreign
file is reported (a warning naming the file and the reason) and skipped for the next one. Damaged
files are never deleted; `set_aside` renames one out of the way before the trainer writes a new
snapshot of the same step.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from .output_files import atomic_write

SNAPSHOT_DIR = "checkpoints"
PREEMPTION_PATH = Path("checkpoints-meta") / "checkpoint.pth"
_SNAPSHOT_NAME = re.compile(r"checkpoint_(\d+)\.pth$")
_TEMPORARY_NAME = re.compile(r"checkpoint(_\d+)?\.pth\..+\.tmp$")
_REQUIRED_ENTRIES = ("step", "model", "ema")
DIGEST_KEY = "blake2b"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: without this a power loss can forget the new name."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _digest(state) -> str:
    """blake2b over every tensor's dtype, shape and bytes and every other leaf's repr, in a fixed
    order, so that equal states give equal digests whatever the file layout."""
    digest = hashlib.blake2b(digest_size=16)

    def visit(value):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(repr(value).encode())

    visit({key: value for key, value in state.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def save_checkpoint(path, state: dict) -> None:
    """Write `state` (with its digest) to `path` atomically (module docstring). The state is
    serialized in memory first, so that a failed write surfaces as the OS's error (a full disk:
    "no space left on device writing PATH") rather than as torch's zip writer's."""
    path = Path(path)
    state = {**state, DIGEST_KEY: _digest(state)}
    buffer = io.BytesIO()
    torch.save(state, buffer)

    def write(temporary):
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())

    atomic_write(path, write, prefix=path.name + ".")  # `<name>.<random>.tmp`: remove_stale_temporaries'
    _fsync_folder(path.parent)


def remove_stale_temporaries(workdir) -> list:
    """Delete the temporary files that an interrupted `save_checkpoint` left in `workdir`'s
    checkpoint folders (`<name>.pth.<random>.tmp`; never a checkpoint's own name). Only the
    workdir's one trainer may call this: another writer's temporary file would be in use."""
    removed = []
    for folder in (Path(workdir) / SNAPSHOT_DIR, preemption_path(workdir).parent):
        if folder.is_dir():
            for path in folder.iterdir():
                if _TEMPORARY_NAME.match(path.name) and path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def set_aside(path) -> Path:
    """Rename a damaged checkpoint to `<name>.unreadable` (or `.unreadable.<n>` if taken), out of
    the names `snapshot_steps` lists, so that a new file can take its name without destroying it."""
    path = Path(path)
    target, number = path.with_name(path.name + ".unreadable"), 1
    while target.exists():
        target, number = path.with_name(f"{path.name}.unreadable.{number}"), number + 1
    os.rename(path, target)
    _fsync_folder(path.parent)
    return target


def numpy_safe_globals() -> list:
    """The numpy globals a checkpoint may name: numpy scalars (`scalar(dtype, raw bytes)`) and
    their dtypes, which is what the reference's training pickles (its optimizer's learning rates
    are numpy.float64). Each rebuilds a number from bytes and runs nothing else. The scalar
    builder is listed under its numpy 1.x name too, which files written then carry."""
    import numpy

    scalar = numpy._core.multiarray.scalar if hasattr(numpy, "_core") else numpy.core.multiarray.scalar
    allowed = [numpy.dtype, (scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar")]
    kinds = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
             "Float16", "Float32", "Float64")
    dtypes = getattr(numpy, "dtypes", None)
    allowed += [getattr(dtypes, f"{kind}DType") for kind in kinds if hasattr(dtypes, f"{kind}DType")]
    return allowed


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)\s+was not an allowed global")
_BLOCKED_MODULE = re.compile(r"whose module (\S+) is blocked")
_REFUSED_BUILD = re.compile(r"Can only build .*but got <class '([^']+)'>")
_REFUSED_OPCODE = re.compile(r"Unsupported operand (\d+)")
_REASON = re.compile(r"WeightsUnpickler error:\s*(.+)", re.DOTALL)


_HARMLESS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}


def pickled_globals(path, limit: int = 1 << 28) -> list:
    """The globals ("module.name") a pickle file (or the data.pkl of a torch zip file) names,
    read by pickletools without running anything; [] when it cannot be read as a pickle."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next((archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")), b"")
        else:
            data = Path(path).read_bytes()[:limit]
        names, strings = [], []
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(argument.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str):
                strings.append(argument)
        return names
    except Exception:  # noqa: BLE001 - a damaged pickle names nothing we can report
        return []


def refusal_reason(error: BaseException, path=None) -> str:
    """A failed weights-only load in one plain line saying what was refused. torch's own text
    advises loading with weights_only=False, which would run whatever the file holds: that
    advice is never passed on; what the file asked for (a global, a rebuilt object, an opcode)
    is named instead (for a plain pickle at `path`, the first global it names). Other failures
    (truncated or corrupt files) give torch's first line."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    refused = _REFUSED_GLOBAL.search(text) or _BLOCKED_MODULE.search(text)
    if refused:
        name = refused.group(1)
        name = name if "." in name else f"builtins.{name}"  # torch drops the module of a builtin
        return (f"it names the Python global {name}, which is not a tensor, number or container: "
                f"loading it would run code from the file, so it is refused")
    built = _REFUSED_BUILD.search(text)
    if built:
        return (f"it rebuilds a {built.group(1)} from a stored state, which only tensors and containers may "
                f"do in a checkpoint: loading it would run code from the file, so it is refused")
    opcode = _REFUSED_OPCODE.search(text)
    if opcode and "Weights only load failed" in text:
        named = [name for name in pickled_globals(path) if name not in _HARMLESS] if path else []
        what = f", naming the Python global {named[0]}" if named else ""
        return (f"it is a plain pickle (instruction {opcode.group(1)} is not one of a tensor file){what}: "
                f"loading it would run code from the file, so it is refused")
    if "Weights only load failed" in text:
        reason = _REASON.search(text)
        lines = [line.strip() for line in (reason.group(1) if reason else "").splitlines() if line.strip()]
        detail = f" ({lines[0]})" if lines and "weights_only" not in lines[0] else ""
        return f"it holds objects other than tensors, numbers and containers{detail}, so it is refused"
    return text.splitlines()[0] if text else type(error).__name__


def safe_load(path, map_location="cpu", what: str = "checkpoint"):
    """`torch.load(path, weights_only=True)`: tensors, numbers (numpy scalars included),
    strings and containers, never code; a missing, truncated, corrupt or code-carrying file
    raises CheckpointError (one line)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            # a plain pickle draws a UserWarning on its protocol before it is refused: a second line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot load {what} {path}: {refusal_reason(error, path)}") from error


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    state = safe_load(path, map_location)
    missing = [key for key in _REQUIRED_ENTRIES if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a sde_diffusion checkpoint (no {', '.join(map(repr, missing))} entry)")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise CheckpointError(f"{path} is not a sde_diffusion checkpoint (step {state['step']!r})")
    if DIGEST_KEY in state and state.pop(DIGEST_KEY) != _digest(state):
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the digest saved with them")
    return state


def snapshot_path(workdir, step: int) -> Path:
    return Path(workdir) / SNAPSHOT_DIR / f"checkpoint_{step}.pth"


def snapshot_steps(workdir) -> list:
    folder = Path(workdir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    matches = (_SNAPSHOT_NAME.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in matches if m)


def check_workdir(workdir) -> None:
    """Raise OSError unless `workdir` is, or can be created as, a folder this process may write
    in; checked before a run starts, so that hours of training never end in a failed save."""
    if not str(workdir or "").strip():
        raise FileNotFoundError("workdir is empty: --workdir must name a folder")
    path = Path(workdir).absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        what = "is" if existing == path else f"cannot be created: {existing} is"
        raise NotADirectoryError(f"workdir {path} {what} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise PermissionError(f"workdir {path} {what}")


def preemption_path(workdir) -> Path:
    return Path(workdir) / PREEMPTION_PATH


def _try_load(path: Path, map_location, expected_step: Optional[int] = None) -> Optional[dict]:
    try:
        state = load_checkpoint(path, map_location)
    except CheckpointError as error:
        log.warning("skipping unreadable checkpoint: %s", error)
        return None
    if expected_step is not None and state["step"] != expected_step:
        log.warning("skipping checkpoint %s: it holds step %d, not the step its name says", path, state["step"])
        return None
    return state


def latest_checkpoint(workdir, map_location="cpu") -> Optional[dict]:
    """The readable checkpoint with the highest step among the preemption file and the snapshots.

    Unreadable files are reported and skipped for the next-highest step. None for a workdir
    without checkpoint files; CheckpointError when there are checkpoint files but none loads, so
    that a damaged workdir never silently restarts from step 0.
    """
    return latest_checkpoint_and_path(workdir, map_location)[0]


def latest_checkpoint_and_path(workdir, map_location="cpu", unreadable: Optional[list] = None) -> tuple:
    """(`latest_checkpoint`, the file it was read from), or (None, None). `unreadable`, if
    given, receives the paths of the files that did not load (for the trainer to set aside)."""
    preemption = preemption_path(workdir)
    steps = snapshot_steps(workdir)
    if not steps and not preemption.exists():
        return None, None
    newest = _try_load(preemption, map_location) if preemption.exists() else None
    if newest is None and preemption.exists() and unreadable is not None:
        unreadable.append(preemption)
    for step in reversed(steps):
        if newest is not None and newest["step"] >= step:
            break
        path = snapshot_path(workdir, step)
        state = _try_load(path, map_location, expected_step=step)
        if state is not None:
            return state, path
    if newest is None:
        raise CheckpointError(f"no readable checkpoint in {workdir}: every checkpoint file is damaged or "
                              f"unsafe (see the warnings above); they are left in place")
    return newest, preemption
