"""Up- and downsampling of feature maps, plain and with FIR filters.

The FIR path follows StyleGAN2's `upfirdn2d` (Karras et al. 2020, "Analyzing and Improving the
Image Quality of StyleGAN", appendix B): zero-stuff by `up`, zero-pad, convolve with a small
low-pass filter, keep every `down`-th sample. NCSN++ (Song et al. 2021, appendix H) uses it with
the filter [1, 3, 3, 1]. Here it is written with plain `F.pad` + depthwise `F.conv2d`, so it runs
anywhere PyTorch does, with no compiled extension.

The padding amounts below are StyleGAN2's: they centre the filter so that up/downsampling a
constant image gives the same constant, and they reproduce the reference NCSN++ outputs exactly.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import append_dims
from . import layers


def fir_kernel_2d(taps: Sequence[float]) -> torch.Tensor:
    """A separable 1-D filter (or a square 2-D one) as a 2-D kernel normalised to sum to one."""
    kernel = torch.as_tensor(taps, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = torch.outer(kernel, kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"fir_kernel must be 1-D or square 2-D; got shape {tuple(kernel.shape)}")
    return kernel / kernel.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero-stuffing, pad by `pad` = (before, after) on both spatial axes, convolve
    each channel with `kernel` (a true convolution, hence the flip), then keep every `down`-th
    sample. x: [B, C, H, W]; kernel: [kh, kw]."""
    batch, channels, height, width = x.shape
    if up > 1:
        stuffed = x.new_zeros(batch, channels, height * up, width * up)
        stuffed[:, :, ::up, ::up] = x
        x = stuffed
    before, after = pad
    x = F.pad(x, (before, after, before, after))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(channels, 1, *kernel.shape)
    # Striding the convolution is the same as convolving and then keeping every down-th sample.
    return F.conv2d(x, weight, stride=down, groups=channels)


def fir_upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample by `factor` with a FIR filter; the filter gets gain factor**2 because zero-stuffing
    leaves only one sample in factor**2 non-zero."""
    excess = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor,
                     pad=((excess + 1) // 2 + factor - 1, excess // 2))


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Low-pass with a FIR filter, then subsample by `factor`."""
    excess = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((excess + 1) // 2, excess // 2))


def fir_upsample_conv_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor,
                         factor: int = 2) -> torch.Tensor:
    """FIR upsampling fused with a 'same' convolution by `weight` ([out, in, k, k]), as in
    StyleGAN2: a strided transposed convolution does the upsampling and the convolution in one
    go, then one FIR pass smooths; padding happens once, at the FIR step."""
    conv_size = weight.shape[-1]
    # conv_transpose2d wants [in, out, k, k]; flipping turns it into a correlation with `weight`.
    transposed = torch.flip(weight, (2, 3)).transpose(0, 1)
    x = F.conv_transpose2d(x, transposed, stride=factor)
    excess = (kernel.shape[0] - factor) - (conv_size - 1)
    return upfirdn2d(x, kernel * factor ** 2,
                     pad=((excess + 1) // 2 + factor - 1, excess // 2 + 1))


def fir_conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor,
                           factor: int = 2) -> torch.Tensor:
    """A convolution by `weight` fused with FIR downsampling: filter once, then a strided conv."""
    conv_size = weight.shape[-1]
    excess = (kernel.shape[0] - factor) + (conv_size - 1)
    x = upfirdn2d(x, kernel, pad=((excess + 1) // 2, excess // 2))
    return F.conv2d(x, weight, stride=factor)


def nearest_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def mean_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.avg_pool2d(x, factor)


def _pad_same_for_stride_2(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 'SAME' padding for a stride-2 3x3 conv on even sizes: one extra row/column
    # at the bottom/right (Ho et al. 2020 was written in TF; its checkpoints expect this).
    return F.pad(x, (0, 1, 0, 1))


class FIRConv2d(nn.Module):
    """A k x k convolution fused with FIR up- or downsampling by 2 (StyleGAN2's `Conv2d`).

    Parameters `weight` [out, in, k, k] then `bias` [out], as in the reference's
    `up_or_down_sampling.Conv2d`."""

    def __init__(self, in_ch: int, out_ch: int, fir_kernel: Sequence[float], up: bool = False,
                 down: bool = False, conv_size: int = 3):
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d resamples: exactly one of up, down must be set")
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, conv_size, conv_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        layers.variance_scaling_(self.weight)
        self.up = up
        self.register_buffer("fir_kernel", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = fir_upsample_conv_2d(x, self.weight, self.fir_kernel)
        else:
            x = fir_conv_downsample_2d(x, self.weight, self.fir_kernel)
        return x + append_dims(self.bias, x.ndim - 1)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour (+ optional 3x3 conv), as in DDPM, or FIR
    (+ optional fused conv), as in NCSN++."""

    def __init__(self, in_ch: int, out_ch: int = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("Upsample without a conv cannot change the channel count")
        self.fir = fir
        self.with_conv = with_conv
        if fir:
            self.register_buffer("fir_kernel", fir_kernel_2d(fir_kernel), persistent=False)
            if with_conv:
                self.conv = FIRConv2d(in_ch, out_ch, fir_kernel, up=True)
        elif with_conv:
            self.conv = layers.conv3x3(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.with_conv else fir_upsample_2d(x, self.fir_kernel)
        x = nearest_upsample_2d(x)
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Halve the resolution: stride-2 3x3 conv or 2x2 average pooling, as in DDPM, or FIR
    (+ optional fused conv), as in NCSN++."""

    def __init__(self, in_ch: int, out_ch: int = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("Downsample without a conv cannot change the channel count")
        self.fir = fir
        self.with_conv = with_conv
        if fir:
            self.register_buffer("fir_kernel", fir_kernel_2d(fir_kernel), persistent=False)
            if with_conv:
                self.conv = FIRConv2d(in_ch, out_ch, fir_kernel, down=True)
        elif with_conv:
            self.conv = layers.conv3x3(in_ch, out_ch, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.with_conv else fir_downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return self.conv(_pad_same_for_stride_2(x))
        return mean_downsample_2d(x)
