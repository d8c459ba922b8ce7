"""The uint8 .npy cache of an image folder: written with ordinary file I/O, checked when opened.

A cache is three files named by the folder's key: `<key>.npy` (images [N, C, H, W]),
`<key>.labels.npy` and `<key>.sums.json`, the last written only when the other two are complete.
The sums hold the file's size, its header and a blake2b digest of every CHUNK_BYTES of image
data and of the labels. Opening a cache checks the size, the header, the labels and
SAMPLED_CHUNKS chunks drawn afresh each time (all of them with `full=True`, after a build, or
with $SDE_DIFFUSION_VERIFY_CACHE=full), so a truncated or overwritten cache is noticed and
rebuilt instead of training on whatever bytes are there.

Why not a memory map for writing: a store to a mapped page of a file the disk has no room for
kills the process with SIGBUS, past any exception handler, and leaves the temporary file behind.
`write()` says ENOSPC instead, which becomes "no space left on device writing PATH".

Each temporary file is held under an exclusive flock while it is written; a start that finds a
`.tmp` nobody holds (a build killed by SIGKILL or a power cut) removes it, and never one that
another process is still writing.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from ..files.output_files import TEMPORARY_SUFFIX, disk_error, open_locked_temporary

CHUNK_BYTES = 1 << 20
SAMPLED_CHUNKS = 8
# A fixed header length: the row count can then be rewritten in place when unreadable files
# turned out to be fewer rows than planned. 128 bytes hold any 4-D uint8 shape.
HEADER_BYTES = 128
VERIFY_ENV = "SDE_DIFFUSION_VERIFY_CACHE"
log = logging.getLogger(__name__)


class CacheCheckError(ValueError):
    """A cache file does not match its sums (truncated, overwritten, or from an older version)."""


def _npy_header(shape: Tuple[int, ...]) -> bytes:
    """The .npy 1.0 header of a C-ordered uint8 array of `shape`, padded to HEADER_BYTES."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != HEADER_BYTES - 10:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def _open_locked_temporary(path: Path):
    """(file object, name) of a new temporary file beside `path`, under an exclusive flock
    (`output_files.open_locked_temporary`)."""
    handle, name = open_locked_temporary(path)
    return os.fdopen(handle, "r+b"), name


def _write_atomically(path: Path, write: Callable) -> None:
    """`write(file)` into a locked temporary file, fsync, then rename it over `path`. Any
    failure removes the temporary file; an OSError becomes one naming `path` (`disk_error`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file, name = _open_locked_temporary(path)
    except OSError as error:
        raise disk_error(error, path) from error
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
            os.replace(name, path)  # while still locked: a cleaner never sees it unheld
    except OSError as error:
        Path(name).unlink(missing_ok=True)
        raise disk_error(error, path) from error
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list:
    """Remove the temporary files in `folder` that no process holds (see the module docstring);
    returns their paths."""
    removed = []
    for path in sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []:
        try:
            handle = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # already gone
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            removed.append(path)
        except OSError:
            pass  # held: another process is writing it
        finally:
            os.close(handle)
    return removed


def _chunk_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_cache(images_path: Path, planned: int, row_shape: Tuple[int, ...],
                rows: Iterable[Tuple[np.ndarray, int]]) -> int:
    """Write the cache of `rows` ((uint8 image of `row_shape`, label) pairs, at most `planned`)
    at `images_path` and its labels and sums beside it; returns the number of rows written."""
    labels, chunks = [], []
    # What a resumed run compares (`app.workdir_config`): the pixels and labels alone, so that
    # another chunk size or header layout of a later version is not "other data".
    contents = hashlib.blake2b(digest_size=16)

    def write_images(file) -> None:
        file.write(_npy_header((planned, *row_shape)))
        pending = bytearray()
        for image, label in rows:
            pixels = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
            contents.update(pixels)
            pending += pixels
            labels.append(label)
            while len(pending) >= CHUNK_BYTES:
                file.write(pending[:CHUNK_BYTES])
                chunks.append(_chunk_digest(bytes(pending[:CHUNK_BYTES])))
                del pending[:CHUNK_BYTES]
        if pending:
            file.write(pending)
            chunks.append(_chunk_digest(bytes(pending)))
        if len(labels) < planned:  # unreadable files were skipped: the header says the rows written
            file.seek(0)
            file.write(_npy_header((len(labels), *row_shape)))
            file.seek(0, os.SEEK_END)

    labels_path, sums_path = _sibling(images_path, "labels.npy"), _sibling(images_path, "sums.json")
    _write_atomically(images_path, write_images)
    label_array = np.asarray(labels, dtype=np.int64)
    contents.update(f"{[len(labels), *row_shape]} {label_array.tolist()}".encode())
    _write_atomically(labels_path, lambda file: np.save(file, label_array))
    sums = {"shape": [len(labels), *row_shape], "header_bytes": HEADER_BYTES, "chunk_bytes": CHUNK_BYTES,
            "file_bytes": HEADER_BYTES + len(labels) * int(np.prod(row_shape)), "chunks": chunks,
            "labels": _chunk_digest(labels_path.read_bytes()), "contents": contents.hexdigest()}
    _write_atomically(sums_path, lambda file: file.write(json.dumps(sums).encode()))
    return len(labels)


def _sibling(images_path: Path, suffix: str) -> Path:
    return images_path.with_name(images_path.name[:-len(".npy")] + "." + suffix)


def cache_files(images_path: Path) -> list:
    return [images_path, _sibling(images_path, "labels.npy"), _sibling(images_path, "sums.json")]


def open_cache(images_path: Path, full: Optional[bool] = None):
    """(images memory-mapped read-only, labels, a digest of the pixels and labels) of a cache
    written by `write_cache`, after checking it (module docstring; `full=None` reads
    $SDE_DIFFUSION_VERIFY_CACHE). FileNotFoundError when a file is missing, CacheCheckError when
    one does not match."""
    labels_path, sums_path = cache_files(images_path)[1:]
    if full is None:
        full = os.environ.get(VERIFY_ENV, "") == "full"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(path)
    if not sums_path.is_file():
        raise CacheCheckError("it has no checksums (written by an older version, or its build was cut short)")
    try:
        sums = json.loads(sums_path.read_text())
        shape, chunk_bytes = tuple(int(n) for n in sums["shape"]), int(sums["chunk_bytes"])
        chunks, expected_size, contents = list(sums["chunks"]), int(sums["file_bytes"]), str(sums["contents"])
    except (ValueError, KeyError, TypeError) as error:
        raise CacheCheckError(f"its checksum file {sums_path} does not read ({error})") from None
    size = images_path.stat().st_size
    if size != expected_size:
        raise CacheCheckError(f"it holds {size} bytes where {expected_size} were written")
    with open(images_path, "rb") as file:
        if file.read(HEADER_BYTES) != _npy_header(shape):
            raise CacheCheckError(f"its header is not that of uint8 images {list(shape)}")
        indices = range(len(chunks))
        if not full and len(chunks) > SAMPLED_CHUNKS + 2:  # first, last and a fresh sample between
            between = random.SystemRandom().sample(range(1, len(chunks) - 1), SAMPLED_CHUNKS)
            indices = sorted({0, len(chunks) - 1, *between})
        for index in indices:
            file.seek(HEADER_BYTES + index * chunk_bytes)
            if _chunk_digest(file.read(chunk_bytes)) != chunks[index]:
                end = min(HEADER_BYTES + (index + 1) * chunk_bytes, expected_size)
                raise CacheCheckError(f"its bytes {HEADER_BYTES + index * chunk_bytes} to {end} do not match "
                                      f"their checksum")
    if _chunk_digest(labels_path.read_bytes()) != sums["labels"]:
        raise CacheCheckError(f"its labels file {labels_path} does not match its checksum")
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except ValueError as error:
        raise CacheCheckError(f"its labels file {labels_path} does not read ({error})") from None
    if labels.shape != shape[:1]:
        raise CacheCheckError(f"it holds {shape[0]} images but {labels.shape} labels")
    return np.load(images_path, mmap_mode="r"), labels, contents
