"""Output files that are either complete or absent, and strict JSON.

`atomic_write` hands the writer a temporary name in the target's folder and renames it over the
target only when the writer returned: a run that fails or is killed while writing leaves the
previous file (say, the last good `eval_200.json`) as it was. A full disk surfaces as one
OSError naming the file ("no space left on device writing PATH"), whatever library wrote it.

`to_json` writes strict JSON (RFC 8259 has no NaN or Infinity, and strict readers reject
Python's bare `NaN`): a non-finite number becomes null and its key is listed under
"nonfinite", so a reader can tell "not computed" from "missing".
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

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


def atomic_write(path, write: Callable[[str], None], prefix: Optional[str] = None) -> Path:
    """Call `write(temporary_path)`, then rename the temporary file over `path` (created with
    its folder). The temporary file, `<prefix><random>.tmp` beside `path` (prefix: a hidden
    `.<name>.` by default), is removed if `write` fails."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.",
                                             suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise disk_error(error, path) from error
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise disk_error(error, path) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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
