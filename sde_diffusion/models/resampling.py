"""DDPM's up- and downsampling of feature maps (Ho et al. 2020, the `ddpm` network): nearest
neighbour doubling and 2x2 mean pooling, each optionally with a 3x3 convolution (a stride-2 one
with TensorFlow's padding when halving). DDPM++ / NCSN++ resample inside EDM's blocks instead,
with [1, 1] or FIR [1, 3, 3, 1] filters (`edm_networks.Conv2d`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import layers


def nearest_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def mean_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.avg_pool2d(x, factor)


def _pad_same_for_stride_2(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' padding for a stride-2 3x3 conv on even sizes: one extra row/column
    # at the bottom/right (Ho et al. 2020 was written in TF; its checkpoints expect this).
    return F.pad(x, (0, 1, 0, 1))


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        self.conv = layers.conv3x3(channels, channels) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nearest_upsample_2d(x)
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        self.conv = layers.conv3x3(channels, channels, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(_pad_same_for_stride_2(x))
        return mean_downsample_2d(x)
