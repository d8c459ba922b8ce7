"""Readers of the published data sets' own file formats, as data (no code from the files runs):
MNIST's and Fashion-MNIST's IDX files and CIFAR-10's python pickle batches."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Dict

import numpy as np

# IDX type codes (third magic byte) -> element type; multi-byte types are big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in .gz): magic = two zero bytes, a type
    code, the number of dims; then each dim as a big-endian uint32; then the elements."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        content = f.read()
    if len(content) < 4 or content[:2] != b"\0\0" or content[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {content[:4].hex()})")
    ndim = content[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", content[4:header])
    dtype = np.dtype(_IDX_TYPES[content[2]])
    expected = header + dtype.itemsize * int(np.prod(dims))
    if len(content) != expected:
        raise ValueError(f"{path}: dims {dims} need {expected} bytes, the file has {len(content)}")
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: unpickling can run arbitrary code,
    and these files come from wherever data.root points."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                             ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path) -> Dict[str, np.ndarray]:
    """One CIFAR-10 batch: {'data': uint8 [N, 3, 32, 32], 'labels': int64 [N]}. The file
    holds a dict with b'data' ([N, 3072], each row the red, green then blue planes row-major)
    and b'labels'."""
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != data.shape[:1]:
        raise ValueError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape}")
    return {"data": data.reshape(-1, 3, 32, 32), "labels": labels}
