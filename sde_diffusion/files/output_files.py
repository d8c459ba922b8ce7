"""Output files that are either complete or absent, and strict JSON.

`atomic_write` hands the writer a temporary name in the target's folder and renames it over the
target only when the writer returned: a run that fails or is killed while writing leaves the
previous file (say, the last good `eval_200.json`) as it was. The temporary file is held under a
flock while it exists, so what a killed run left is told apart from what a live one writes and
removed at the next start (`remove_stale_outputs`); `written_together` renames several outputs
at once. A full disk surfaces as one
OSError naming the file ("no space left on device writing PATH"), whatever library wrote it.

`to_json` writes strict JSON (RFC 8259 has no NaN or Infinity, and strict readers reject
Python's bare `NaN`): a non-finite number becomes null and its key is listed under
"nonfinite", so a reader can tell "not computed" from "missing".
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Tuple

TEMPORARY_SUFFIX = ".tmp"


class WriteError(OSError):
    """An OSError whose text is its message alone (no "[Errno 28]" prefix), keeping the errno."""

    def __str__(self) -> str:
        return self.strerror


def disk_error(error: OSError, path) -> OSError:
    """`error` as a WriteError naming `path` (ENOSPC and EDQUOT in plain words)."""
    if isinstance(error, WriteError):
        return error
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(error.errno, f"no space left on device writing {path}")
    return WriteError(error.errno, f"cannot write {path}: {error.strerror or error}")


def open_locked_temporary(path, prefix: Optional[str] = None) -> Tuple[int, str]:
    """(handle, name) of a new temporary file `<prefix><random>.tmp` beside `path` (prefix: a
    hidden `.<name>.` by default), held under an exclusive flock until the handle is closed, so
    that `remove_stale_temporaries` (`image_cache`) never takes a file a live process writes. A
    cleaner may unlink the name between its creation and the lock: then try again."""
    path = Path(path)
    for _ in range(10):
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=TEMPORARY_SUFFIX)
        os.fchmod(handle, _new_file_mode())  # mkstemp's 0600 would become the output's mode
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.fstat(handle).st_nlink > 0:
            return handle, name
        os.close(handle)
    raise OSError(errno.EAGAIN, f"cannot create a temporary file beside {path}")


def _new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_together = threading.local()  # the renames `written_together` holds back, per thread


def atomic_write(path, write: Callable[[str], None], prefix: Optional[str] = None) -> Path:
    """Call `write(temporary_path)`, then rename the temporary file over `path` (created with
    its folder). The temporary file (`open_locked_temporary`) is removed if `write` fails.
    Inside `written_together` the rename waits for the end of the block."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = open_locked_temporary(path, prefix)
    except OSError as error:
        raise disk_error(error, path) from error
    group = getattr(_together, "group", None)
    try:
        write(temporary)
        if group is not None:
            group.append((handle, temporary, path))
            return path
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        os.close(handle)
        raise disk_error(error, path) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        os.close(handle)
        raise
    os.close(handle)  # after the rename: a cleaner never sees the temporary unheld
    return path


@contextmanager
def written_together():
    """Outputs that belong together (samples and their picture): every `atomic_write` inside
    the block writes its temporary file, and the renames happen at the end, one after another
    with SIGTERM, SIGINT and SIGHUP held back, so a run stopped or failing before then leaves
    every earlier file as it was, never a new `.npz` beside an old `.png`."""
    group = []
    _together.group = group
    try:
        yield
    except BaseException:
        for handle, temporary, _ in group:
            Path(temporary).unlink(missing_ok=True)
            os.close(handle)
        raise
    finally:
        _together.group = None
    with _signals_held():
        try:
            for index, (handle, temporary, path) in enumerate(group):
                try:
                    os.replace(temporary, path)
                except OSError as error:
                    for _, rest, _ in group[index:]:
                        Path(rest).unlink(missing_ok=True)
                    raise disk_error(error, path) from error
        finally:
            for handle, _, _ in group:
                os.close(handle)


@contextmanager
def _signals_held():
    """SIGTERM, SIGINT and SIGHUP recorded, not handled, inside the block, then sent again.
    Python runs its handlers in the main thread whichever thread the signal reached, so blocking
    the signal there would not hold a handler back: its Python handler is swapped instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {signum: signal.signal(signum, lambda number, frame: arrived.append(number))
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            os.kill(os.getpid(), arrived[0])


def cache_folder() -> Path:
    """Where the package keeps what it computes once (classifier judges, image caches):
    $SDE_DIFFUSION_CACHE, else ~/.cache/sde_diffusion."""
    return Path(os.environ.get("SDE_DIFFUSION_CACHE") or Path.home() / ".cache" / "sde_diffusion")


def write_text_atomic(path, text: str) -> Path:
    def write(temporary):
        with open(temporary, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    return atomic_write(path, write)


def finite_only(record: dict) -> dict:
    """`record` with non-finite float values replaced by None and their keys listed under
    "nonfinite" (nested dicts are visited; their keys are joined with dots)."""
    nonfinite = []

    def clean(value, key):
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite.append(key)
            return None
        if isinstance(value, dict):
            return {name: clean(item, f"{key}.{name}" if key else str(name)) for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{key}[{index}]") for index, item in enumerate(value)]
        return value

    cleaned = clean(record, "")
    if nonfinite:
        cleaned["nonfinite"] = nonfinite
    return cleaned


def to_json(record: dict, **kwargs) -> str:
    """Strict JSON of `record` (see `finite_only`)."""
    return json.dumps(finite_only(record), allow_nan=False, **kwargs)
