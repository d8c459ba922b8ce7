"""Image arrays from files: .npz archives and PNGs as float arrays in [0, 1], and the layouts
users store images in ([N, H, W], [N, C, H, W], [N, H, W, C]) as [N, C, H, W] tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def read_array(path: Path, what: str) -> np.ndarray:
    """A float array in [0, 1] from an .npz or .png file (uint8 scaled by 1/255). ValueError
    (one line naming the file) for a file that does not read, an empty array, NaN or infinite
    values, or values outside [0, 1]."""
    path = Path(path)
    if path.suffix not in (".npz", ".png"):
        raise ValueError(f"{what} file {path} is neither .npz nor .png")
    try:
        array = _read(path, what)
    except (OSError, ValueError, SyntaxError, KeyError) as error:  # PIL/zip/pickle refusals of a bad file
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


def _read(path: Path, what: str) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError(f"{what} file {path} holds no array")
            return archive["x"] if "x" in archive.files else archive[archive.files[0]]
    import matplotlib.image

    array = matplotlib.image.imread(path)  # float in [0, 1], [H, W] or [H, W, 3 or 4]
    return array[..., :3] if array.ndim == 3 and array.shape[-1] == 4 else array


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def to_nchw(array: np.ndarray, source) -> torch.Tensor:
    if array.ndim == 3:  # [N, H, W]: gray
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images in {source} must be [N, H, W], [N, C, H, W] or [N, H, W, C] with "
                         f"C = 1 or 3, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))
