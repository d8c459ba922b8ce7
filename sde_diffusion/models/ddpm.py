"""The DDPM U-Net (Ho et al. 2020, appendix B), registered as model `ddpm`.

A wide-ResNet U-Net (Ronneberger et al. 2015; Zagoruyko & Komodakis 2016): `len(ch_mult)`
resolutions with `num_res_blocks` residual blocks each on the way down (plus one more on the way
up, fed the matching skip), self-attention at `attn_resolutions`, GroupNorm with 32 groups,
swish, and a sinusoidal embedding of the time label added into every block. As in the reference,
the network is always conditioned on the label (`conditional` is not read).

`scale_by_sigma` divides the output by the labels (sigma, for VE models in this package); the
reference indexed its geometric sigmas by integer labels instead.

Like the reference port (and unlike Ho et al.'s TF code, which attends after every decoder
block), the decoder attends once per level, after its blocks: the CIFAR-10 configuration has
35.2M parameters here against the paper's 35.7M. Checkpoint compatibility decides.

Reference checkpoints (score_sde_pytorch `models/ddpm.py`, a flat `all_modules` list) map onto
this module by position, because the modules here are created in the same order:

    all_modules.0, .1            -> noise_mlp.dense_0, .dense_1
    all_modules.2                -> conv_in
    per level, per block         -> down_levels[i].blocks[j].resnet (then .attention)
    per level but the last       -> down_levels[i].downsample
    next three                   -> mid_resnet_1, mid_attention, mid_resnet_2
    per level, coarsest first    -> up_levels[k].blocks[*], .attention, .upsample
    last two                     -> norm_out, conv_out

So `ema.shadow_params` (one tensor per reference parameter, in order) pairs with
`list(model.parameters())`, and the reference state dict without its `sigmas` buffer pairs with
`model.state_dict()`; shapes agree pair by pair. Inside blocks the reference names map as
GroupNorm_0/Conv_0/Dense_0/GroupNorm_1/Conv_1/NIN_0 -> norm_in/conv_in/noise_projection/
norm_out/conv_out/skip, attention NIN_0..3 -> query/key/value/output, NIN W/b -> weight/bias.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import append_dims
from .blocks import ResnetBlock, ResnetWithAttention, ResolutionLevel, level_resolutions
from .layers import (AttentionBlock, NoiseLevelMLP, activation, add_class_embedding, class_embedding_or_none,
                     conv3x3, group_norm, sinusoidal_embedding)
from .registry import register_model
from .resampling import Downsample, Upsample

DDPM_GROUPS = 32  # GroupNorm groups throughout the DDPM U-Net (Ho et al. 2020)


@register_model("ddpm", images=True, family="score_sde")
class DDPM(nn.Module):
    """DDPM U-Net. forward(x [B, C, H, W], labels [B], class_labels [B] or None) -> [B, C, H, W];
    labels are time labels (t * 999 for VP SDEs), embedded sinusoidally; with num_classes > 0 a
    learned class vector is added to that embedding (None: the "no label" vector)."""

    def __init__(self, image_size: int = 32, num_channels: int = 3, centered: bool = True,
                 nf: int = 128,                      # base width; level i has nf * ch_mult[i]
                 ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2,            # residual blocks per level (encoder)
                 attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1,
                 resamp_with_conv: bool = True,      # conv in up/downsampling, else interp/pool
                 nonlinearity: str = "swish",
                 scale_by_sigma: bool = False,       # divide the output by labels (= sigma)
                 num_classes: int = 0):              # > 0: class-conditional (labels 0..n-1)
        super().__init__()
        resolutions = level_resolutions(image_size, ch_mult)
        widths = [nf] + [nf * mult for mult in ch_mult]
        if any(width % DDPM_GROUPS for width in widths):
            raise ValueError(f"model.nf times every model.ch_mult must be a multiple of {DDPM_GROUPS} (ddpm's "
                             f"GroupNorm has {DDPM_GROUPS} groups), got nf={nf}, ch_mult={tuple(ch_mult)}")
        self.nf = nf
        self.centered = centered
        self.scale_by_sigma = scale_by_sigma
        self.act = act = activation(nonlinearity)
        temb_dim = 4 * nf
        make_resnet = partial(ResnetBlock, act, temb_dim=temb_dim, dropout=dropout,
                              num_groups=DDPM_GROUPS)
        make_attention = partial(AttentionBlock, num_groups=DDPM_GROUPS)

        self.noise_mlp = NoiseLevelMLP(nf, temb_dim, act)
        self.conv_in = conv3x3(num_channels, nf)

        skip_channels = [nf]
        in_ch = nf
        self.down_levels = nn.ModuleList()
        for level, (mult, resolution) in enumerate(zip(ch_mult, resolutions)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                out_ch = nf * mult
                attention = make_attention(out_ch) if resolution in attn_resolutions else None
                blocks.append(ResnetWithAttention(make_resnet(in_ch, out_ch), attention))
                in_ch = out_ch
                skip_channels.append(in_ch)
            downsample = None
            if level != len(ch_mult) - 1:
                downsample = Downsample(in_ch, with_conv=resamp_with_conv)
                skip_channels.append(in_ch)
            self.down_levels.append(ResolutionLevel(blocks=blocks, downsample=downsample))

        self.mid_resnet_1 = make_resnet(in_ch)
        self.mid_attention = make_attention(in_ch)
        self.mid_resnet_2 = make_resnet(in_ch)

        self.up_levels = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[level]
                blocks.append(make_resnet(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            attention = make_attention(in_ch) if resolutions[level] in attn_resolutions else None
            upsample = Upsample(in_ch, with_conv=resamp_with_conv) if level != 0 else None
            self.up_levels.append(
                ResolutionLevel(blocks=blocks, attention=attention, upsample=upsample))
        assert not skip_channels

        self.norm_out = group_norm(in_ch, DDPM_GROUPS)
        self.conv_out = conv3x3(in_ch, num_channels, init_scale=0.0)
        # Created last, so that reference checkpoints still map onto the modules by position.
        self.num_classes = num_classes
        self.class_embedding = class_embedding_or_none(num_classes, temb_dim)


    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        temb = self.noise_mlp(sinusoidal_embedding(labels, self.nf))
        temb = add_class_embedding(temb, self.class_embedding, class_labels)
        # Data in [0, 1] is mapped to [-1, 1], the range the network was designed for.
        h = x if self.centered else 2 * x - 1.0

        skips = [self.conv_in(h)]
        for level in self.down_levels:
            for block in level.blocks:
                skips.append(block(skips[-1], temb))
            if level.downsample is not None:
                skips.append(level.downsample(skips[-1]))

        h = self.mid_resnet_1(skips[-1], temb)
        h = self.mid_attention(h)
        h = self.mid_resnet_2(h, temb)

        for level in self.up_levels:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if level.attention is not None:
                h = level.attention(h)
            if level.upsample is not None:
                h = level.upsample(h)

        h = self.conv_out(self.act(self.norm_out(h)))
        if self.scale_by_sigma:
            h = h / append_dims(labels, h.ndim)
        return h
