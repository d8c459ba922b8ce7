"""Pictures of samples: image grids and 2-D scatter plots against the data, as PNG files."""
from __future__ import annotations

import math
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .output_files import atomic_write  # noqa: E402


def image_grid(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 1) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> one [rows (H + p) + p, cols (W + p) + p, C] array, padded white."""
    count, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    grid = torch.ones(channels, rows * (height + padding) + padding, nrow * (width + padding) + padding)
    for k, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        top, left = padding + (k // nrow) * (height + padding), padding + (k % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: torch.Tensor, path, nrow: Optional[int] = None, scale: int = 4) -> None:
    """Write the grid as a PNG, each pixel enlarged `scale` times (small images stay legible)."""
    grid = image_grid(images, nrow)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if grid.shape[2] == 1:
        atomic_write(path, lambda temporary: plt.imsave(temporary, grid[..., 0], cmap="gray", vmin=0.0,
                                                        vmax=1.0, format="png"))
    else:
        atomic_write(path, lambda temporary: plt.imsave(temporary, grid, format="png"))


def save_scatter(samples: torch.Tensor, path, data: Optional[torch.Tensor] = None,
                 title: str = "", limit: Optional[float] = None) -> None:
    """Side-by-side scatter plots of the data (when given) and the samples, on the same axes."""
    panels = [("data", data), ("samples", samples)] if data is not None else [("samples", samples)]
    points = torch.cat([p for _, p in panels if p is not None]).detach().cpu().float()
    limit = limit or float(points.abs().quantile(0.995)) * 1.1
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels):
        values = values.detach().cpu().float().numpy()
        axis.scatter(values[:, 0], values[:, 1], s=1, alpha=0.5)
        axis.set(xlim=(-limit, limit), ylim=(-limit, limit), title=f"{name} ({len(values)})", aspect="equal")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)


def save_figure(figure, path, dpi: int = 100) -> None:
    """Write a matplotlib figure as a PNG, whole or not at all, and close it."""
    try:
        atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))
    finally:
        plt.close(figure)
