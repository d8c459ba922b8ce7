"""Image arrays from files: .npz archives and PNGs as float arrays in [0, 1], and the layouts
users store images in ([N, H, W], [N, C, H, W], [N, H, W, C]) as [N, C, H, W] tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def read_array(path: Path, what: str) -> np.ndarray:
    """A float array in [0, 1] from an .npz or .png file (uint8 scaled by 1/255)."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if not archive.files:
                raise ValueError(f"{what} file {path} holds no array")
            array = archive["x"] if "x" in archive.files else archive[archive.files[0]]
    elif path.suffix == ".png":
        import matplotlib.image

        array = matplotlib.image.imread(path)  # float in [0, 1], [H, W] or [H, W, 3 or 4]
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
    else:
        raise ValueError(f"{what} file {path} is neither .npz nor .png")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"{what} in {path} must be uint8 or floats in [0, 1], found "
                         f"[{array.min():.3g}, {array.max():.3g}]")
    return array


def to_nchw(array: np.ndarray, source) -> torch.Tensor:
    if array.ndim == 3:  # [N, H, W]: gray
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images in {source} must be [N, H, W], [N, C, H, W] or [N, H, W, C] with "
                         f"C = 1 or 3, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))
