"""Image batches between the data's [0, 1] and a model's space, dequantization for likelihoods,
and the flip augmentation."""
from __future__ import annotations

from typing import Optional

import torch

from ..utils import append_dims


def to_model_space(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1] when `centered` (as VP models expect), else unchanged."""
    return 2 * x - 1 if centered else x


def from_model_space(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """The inverse of `to_model_space`, clamped to [0, 1] (samples overshoot slightly)."""
    return ((x + 1) / 2 if centered else x).clamp(0, 1)


def uniform_dequantize(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                       levels: int = 256) -> torch.Tensor:
    """Continuous data from discrete: x in [0, 1] on the grid k / (levels - 1) becomes
    (k + u) / levels with u ~ U[0, 1), uniform on bin k = [k / levels, (k + 1) / levels), so that
    likelihoods of the result are densities of a discrete model (Theis et al. 2016).
    `quantize` inverts it. k is rounded from x, so x only needs to be near its grid point."""
    k = torch.round(x * (levels - 1)).clamp_(0, levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = (k + u) / levels
    # k + u rounds up to k + 1 when u is within half an ulp of 1 (~1e-6 of float32 draws near
    # k = 255): pull such values back below the bin's upper edge. Exact for power-of-two levels.
    return torch.minimum(y, torch.nextafter((k + 1) / levels, torch.zeros_like(y)))


def quantize(y: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """The inverse of `uniform_dequantize`: bin k = floor(y * levels) back to k / (levels - 1)."""
    k = torch.floor(y.double() * levels).clamp_(0, levels - 1)
    return (k / (levels - 1)).to(y.dtype)


def random_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mirror each image of the batch [B, C, H, W] left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(append_dims(flip, x.ndim), x.flip(-1), x)
