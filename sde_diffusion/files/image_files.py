"""Image arrays from files: .npz archives and PNGs as float arrays in [0, 1], and the layouts
users store images in ([N, H, W], [N, C, H, W], [N, H, W, C]) as [N, C, H, W] tensors.

An .npz member is checked from its .npy header before anything is read: its dtype must be
numbers, the bytes it claims must be in the zip (a 236-byte file may claim terabytes), and its
size as float32 must fit NPZ_BUDGET_GIB (default 4 GiB, or $SDE_DIFFUSION_NPZ_BUDGET_GIB): an
archive of zeros compresses a thousandfold, and decoding it would take the memory first and
fail (or swap) after. The refusal is one line naming the file, the array and the claimed size.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

NPZ_BUDGET_GIB = 4.0
BUDGET_ENV = "SDE_DIFFUSION_NPZ_BUDGET_GIB"


def read_array(path: Path, what: str) -> np.ndarray:
    """A float array in [0, 1] from an .npz or .png file (uint8 scaled by 1/255). ValueError
    (one line naming the file) for a file that does not read, an empty array, NaN or infinite
    values, or values outside [0, 1]."""
    path = Path(path)
    if path.suffix not in (".npz", ".png"):
        raise ValueError(f"{what} file {path} is neither .npz nor .png")
    try:
        array = _read(path, what)
    except (OSError, ValueError, SyntaxError, KeyError, EOFError, zipfile.BadZipFile) as error:  # PIL/zip refusals
        if isinstance(error, ValueError) and str(error).startswith(f"{what} file"):
            raise
        raise ValueError(f"{what} file {path} cannot be read as {path.suffix[1:]}: "
                         f"{_first_line(error)}") from None
    if array.size == 0:
        raise ValueError(f"{what} file {path} holds an empty array (shape {array.shape})")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} file {path} must hold numbers, found dtype {array.dtype}")
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{what} file {path} holds {int(bad.sum())} NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"{what} in {path} must be uint8 or floats in [0, 1], found "
                         f"[{array.min():.3g}, {array.max():.3g}]")
    return array


def human_bytes(count: float) -> str:
    """1.5 KiB, 2.86 TiB, ... (binary units)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1024


def npz_budget_bytes() -> int:
    text = os.environ.get(BUDGET_ENV, "")
    try:
        gib = float(text) if text else NPZ_BUDGET_GIB
    except ValueError:
        raise ValueError(f"${BUDGET_ENV} must be a number of GiB, got {text!r}") from None
    return int(gib * 2 ** 30)


def npz_header(path: Path, name: str, what: str) -> Optional[Tuple[tuple, np.dtype]]:
    """(shape, dtype) of array `name` of the .npz `path` from its .npy header alone, after the
    checks of the module docstring (ValueError naming the file otherwise); None when the archive
    has no such array."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(name + ".npy")
        except KeyError:
            return None
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            header_bytes = member.tell()
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} file {path}: array {name!r} must hold numbers, found dtype {dtype}")
    count = int(np.prod(shape, dtype=object))
    claimed = count * dtype.itemsize
    if header_bytes + claimed > info.file_size:
        raise ValueError(f"{what} file {path}: array {name!r} claims shape {tuple(shape)} {dtype} "
                         f"({human_bytes(claimed)}) but holds {human_bytes(info.file_size)}")
    budget = npz_budget_bytes()
    if 4 * count > budget:
        raise ValueError(f"{what} file {path}: array {name!r} of shape {tuple(shape)} {dtype} is "
                         f"{human_bytes(4 * count)} as float32, over the {human_bytes(budget)} budget for "
                         f".npz inputs (${BUDGET_ENV} raises it)")
    return tuple(shape), dtype


def _images_member(path: Path, what: str) -> str:
    """The name of the images array of an .npz: `x`, else its first array."""
    with zipfile.ZipFile(path) as archive:  # its directory only
        names = [name[:-len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
    if not names:
        raise ValueError(f"{what} file {path} holds no array")
    return "x" if "x" in names else names[0]


def read_npz_member(path: Path, name: str, what: str) -> Optional[np.ndarray]:
    """Array `name` of the .npz `path` once its header passed `npz_header`; None when absent."""
    if npz_header(path, name, what) is None:
        return None
    with np.load(path, allow_pickle=False) as archive:
        return archive[name]


def _read(path: Path, what: str) -> np.ndarray:
    if path.suffix == ".npz":
        return read_npz_member(path, _images_member(path, what), what)
    import matplotlib.image

    array = matplotlib.image.imread(path)  # float in [0, 1], [H, W] or [H, W, 3 or 4]
    return array[..., :3] if array.ndim == 3 and array.shape[-1] == 4 else array


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _nchw_order(shape: tuple, source) -> Optional[tuple]:
    """How to read images of `shape` as [N, C, H, W]: None when they are [N, H, W] (gray, a
    channel axis to add), else the transpose; ValueError naming `source` for any other shape."""
    order = None
    if len(shape) == 4:
        order = (0, 3, 1, 2) if shape[1] not in (1, 3) and shape[-1] in (1, 3) else (0, 1, 2, 3)
    if len(shape) == 3:
        nchw = (shape[0], 1, *shape[1:])
    elif len(shape) == 4 and shape[order[1]] in (1, 3):
        nchw = tuple(shape[i] for i in order)
    else:
        raise ValueError(f"images in {source} must be [N, H, W], [N, C, H, W] or [N, H, W, C] with "
                         f"C = 1 or 3, got shape {tuple(shape)}")
    # Images are resized to a square without cropping: any other shape would be stretched, and is
    # more often a misread layout (a 16x3 strip of "pixels") than pictures.
    if nchw[2] != nchw[3]:
        raise ValueError(f"images in {source} must be square: shape {tuple(shape)} reads as "
                         f"{nchw[1]} channels of {nchw[2]}x{nchw[3]} pixels; crop them to squares first")
    return order


def to_nchw(array: np.ndarray, source) -> torch.Tensor:
    """[N, H, W], [N, C, H, W] or [N, H, W, C] images (C = 1 or 3, square) as [N, C, H, W]."""
    order = _nchw_order(array.shape, source)
    array = array[:, None] if order is None else array.transpose(order)
    return torch.from_numpy(np.ascontiguousarray(array))


def check_npz_images(path: Path, what: str) -> tuple:
    """The shape of the images an .npz holds, checked from its header alone (`npz_header`, the
    layouts of `to_nchw`): what a config check can afford."""
    path = Path(path).expanduser()
    try:
        shape, _ = npz_header(path, _images_member(path, what), what)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith(f"{what} file"):
            raise
        raise ValueError(f"{what} file {path} cannot be read as npz: {_first_line(error)}") from None
    _nchw_order(shape, path)
    return shape


def read_npz_images(path, keep) -> Tuple[np.ndarray, np.ndarray]:
    """(float images [N, C, H, W] in [0, 1], int64 labels [N]) of the .npz `path` (`x`, and
    `labels` if present, else all 0) at the indices where `keep(count)` (a boolean mask) is True.
    Labels must be integers >= 0, one per image."""
    path = Path(path).expanduser()
    images = to_nchw(read_array(path, "images"), path).numpy()
    labels = read_npz_labels(path, len(images))
    mask = keep(len(images))
    return images[mask], labels[mask]


def read_npz_labels(path: Path, count: Optional[int] = None) -> np.ndarray:
    """The int64 `labels` [N] of the .npz `path` (zeros when it has none and `count` is given),
    ValueError naming the file for labels that are not integers >= 0 or not one per image."""
    try:
        labels = read_npz_member(path, "labels", "labels")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith("labels file"):
            raise
        raise ValueError(f"labels file {path} cannot be read as npz: {_first_line(error)}") from None
    if labels is None:
        return np.zeros(count or 0, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels in {path} must be one index per image, found shape {labels.shape}")
    if count is not None and len(labels) != count:
        raise ValueError(f"{path} holds {count} images but {len(labels)} labels")
    if labels.size and (not np.isfinite(labels).all() or (labels != np.round(labels)).any() or labels.min() < 0):
        raise ValueError(f"labels in {path} must be integers >= 0 (class indices), found values like "
                         f"{labels[(labels != np.round(labels)) | (labels < 0)][:1].tolist() or labels[:1].tolist()}")
    return labels.astype(np.int64)
