"""Inpainting masks: named holes and random pixels, or a mask read from an .npz / .png file that
is 1 (white) where pixels are kept. A mask is a bool tensor [1, 1, H, W], True where the pixel
is observed, the form `sampling.controllable.inpaint` takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..files.image_files import read_array


def _hole(size: int, rows: slice, cols: slice) -> torch.Tensor:
    keep = torch.ones(size, size, dtype=torch.bool)
    keep[rows, cols] = False
    return keep


MASKS = {
    "half_left": lambda size, seed: _hole(size, slice(None), slice(0, size // 2)),
    "half_right": lambda size, seed: _hole(size, slice(None), slice(size // 2, None)),
    "half_top": lambda size, seed: _hole(size, slice(0, size // 2), slice(None)),
    "half_bottom": lambda size, seed: _hole(size, slice(size // 2, None), slice(None)),
    "center_square": lambda size, seed: _hole(size, slice(size // 4, size - size // 4),
                                              slice(size // 4, size - size // 4)),
}
RANDOM_PIXELS = "random_pixels:"  # random_pixels:p, each pixel missing with probability p


def is_mask_name(name: str) -> bool:
    if name.startswith(RANDOM_PIXELS):
        try:
            return 0 < float(name[len(RANDOM_PIXELS):]) < 1
        except ValueError:
            return False
    return name in MASKS


def make_mask(spec: str, size: int, seed: int) -> torch.Tensor:
    """The observed-pixel mask [1, 1, size, size] (bool) named by `spec` or read from its file."""
    if spec.startswith(RANDOM_PIXELS):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.rand(size, size, generator=generator) >= float(spec[len(RANDOM_PIXELS):])
    elif spec in MASKS:
        keep = MASKS[spec](size, seed)
    else:
        array = np.squeeze(read_array(Path(spec), "mask"))  # [H, W], or with 3 channels
        if array.ndim == 3:
            array = array.mean(-1 if array.shape[-1] == 3 else 0)
        if array.shape != (size, size):
            raise ValueError(f"mask {spec} is {'x'.join(map(str, array.shape))}, not {size}x{size} "
                             "(data.image_size)")
        keep = torch.as_tensor(array) > 0.5
    return keep[None, None]
