"""The `ddpm` U-Net's residual block and the containers that group its modules by resolution.

The block creates its parameters in the reference's order (score_sde_pytorch `layers.py`), so
checkpoints map by position: input norm (GroupNorm_0), input conv (Conv_0), noise projection
(Dense_0), output norm (GroupNorm_1), output conv (Conv_1), then the skip projection (NIN_0).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import append_dims
from .layers import NIN, conv3x3, dense, group_norm, residual_sum


def level_resolutions(image_size: int, ch_mult: Sequence[int]) -> list:
    """The feature-map sizes of the U-Net, after checking that `image_size` halves cleanly
    `len(ch_mult) - 1` times."""
    if not ch_mult:
        raise ValueError("ch_mult must list at least one channel multiplier")
    factor = 2 ** (len(ch_mult) - 1)
    if image_size < factor or image_size % factor:
        raise ValueError(f"image_size={image_size} must be divisible by "
                         f"2**(len(ch_mult)-1)={factor}: ch_mult={tuple(ch_mult)} halves the "
                         f"resolution {len(ch_mult) - 1} times")
    return [image_size // 2 ** level for level in range(len(ch_mult))]


class ResnetBlock(nn.Module):
    """The DDPM residual block (Ho et al. 2020, after Zagoruyko & Komodakis' wide ResNet):
    norm-act-conv, add the projected noise embedding, norm-act-dropout-conv, plus a skip path
    (a NIN when the width changes). With `skip_rescale` and `num_groups=None` it is DDPM++'s
    variant (Song et al. 2021, appendix H)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None,
                 temb_dim: Optional[int] = None, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0, num_groups: Optional[int] = None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm_in = group_norm(in_ch, num_groups)
        self.conv_in = conv3x3(in_ch, out_ch)
        self.noise_projection = dense(temb_dim, out_ch) if temb_dim is not None else None
        self.norm_out = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        # init_scale ~ 0 starts each block near the identity (Goyal et al. 2017, "zero-gamma").
        self.conv_out = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.skip = NIN(in_ch, out_ch) if in_ch != out_ch else None
        self.act = act
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv_in(self.act(self.norm_in(x)))
        if temb is not None:
            h = h + append_dims(self.noise_projection(self.act(temb)), h.ndim)
        h = self.conv_out(self.dropout(self.act(self.norm_out(h))))
        if self.skip is not None:
            x = self.skip(x)
        return residual_sum(x, h, self.skip_rescale)


class ResnetWithAttention(nn.Module):
    """A residual block optionally followed by self-attention (the encoder's unit at the
    resolutions listed in `attn_resolutions`)."""

    def __init__(self, resnet: nn.Module, attention: Optional[nn.Module] = None):
        super().__init__()
        self.resnet = resnet
        self.attention = attention

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.resnet(x, temb)
        return self.attention(h) if self.attention is not None else h


class ResolutionLevel(nn.Module):
    """The modules of one U-Net resolution, registered in the order given (which fixes the
    parameter order). Parts that a configuration lacks are None. The network wires them."""

    def __init__(self, **parts: Optional[nn.Module]):
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)
