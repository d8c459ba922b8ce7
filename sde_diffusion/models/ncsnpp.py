"""NCSN++ and DDPM++ (Song et al. 2021, appendix H), registered as model `ncsnpp`.

One U-Net family covering both architectures of the paper:
- DDPM++: DDPM's U-Net with skip rescaling by 1/sqrt(2), BigGAN-style residual blocks that
  resample themselves, positional embedding of t * 999 (VP / sub-VP);
- NCSN++: the same plus FIR up/downsampling (StyleGAN2's [1, 3, 3, 1] filter), Gaussian Fourier
  features of log sigma, an input pyramid (`progressive_input`) and/or output pyramid
  (`progressive`), and the output divided by sigma (`scale_by_sigma`, VE).

Progressive paths (Karras et al. 2018; StyleGAN2's "input/output skips" and "residual"):
`progressive_input='input_skip'` feeds the downsampled image into every coarser level through a
1x1 conv (summed or concatenated); 'residual' carries its own downsampled-with-conv stream summed
into the features. `progressive='output_skip'` builds the output as a sum of upsampled per-level
RGB predictions; 'residual' carries an upsampled stream summed into the decoder features.

Reference checkpoints (score_sde_pytorch `models/ncsnpp.py`, a flat `all_modules` list) map onto
this module by position, because the modules here are created in the same order:

    all_modules.0 (fourier only)  -> fourier_projection (its `W` is our buffer `frequencies`)
    next two (if conditional)     -> noise_mlp.dense_0, .dense_1
    next                          -> conv_in
    per level, per block          -> down_levels[i].blocks[j].resnet (then .attention)
    per level but the last        -> down_levels[i].downsample, then .pyramid_downsample and
                                     .pyramid_combine when progressive_input is set
    next three                    -> mid_resnet_1, mid_attention, mid_resnet_2
    per level, coarsest first     -> up_levels[k].blocks[*], .attention, .pyramid_upsample,
                                     .pyramid_norm, .pyramid_conv, .upsample
    last two (unless output_skip) -> norm_out, conv_out

So `ema.shadow_params` (the reference's trainable parameters, in order; the Fourier `W` is not
trainable and not among them) pairs with `list(model.parameters())`, and the reference state dict
without its `sigmas` buffer pairs with `model.state_dict()` (FIR kernels are non-persistent
buffers); shapes agree pair by pair. Inside blocks: GroupNorm_0/Conv_0/Dense_0/GroupNorm_1/
Conv_1/Conv_2 (or NIN_0) -> norm_in/conv_in/noise_projection/norm_out/conv_out/skip; attention
GroupNorm_0, NIN_0..3 -> norm, query/key/value/output; Combine.Conv -> projection;
Upsample/Downsample Conv2d_0 (FIR conv) or Conv_0 (plain conv) -> conv.

`scale_by_sigma` divides by the labels, which are sigma under this package's VE convention
(`SDE.noise_labels`). The reference's discrete-VE models (positional embedding) were
instead fed integer indices i and divided by sigma_i.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import append_dims
from .blocks import BigGANResnetBlock, Combine, ResnetBlock, ResnetWithAttention, ResolutionLevel, level_resolutions
from .layers import (AttentionBlock, GaussianFourierProjection, NoiseLevelMLP, activation, add_class_embedding,
                     class_embedding_or_none, conv3x3, group_norm, residual_sum, sinusoidal_embedding)
from .registry import register_model
from .resampling import Downsample, Upsample

CHOICES = {
    "embedding_type": ("fourier", "positional"),
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "attention_type": ("ddpm",),
}
# The parts of one encoder / decoder level; a configuration leaves some of them None.
_DOWN_PARTS = ("blocks", "downsample", "pyramid_downsample", "pyramid_combine")
_UP_PARTS = ("blocks", "attention", "pyramid_upsample", "pyramid_norm", "pyramid_conv", "upsample")


def _check_choice(field: str, value: str) -> str:
    value = value.lower()
    if value not in CHOICES[field]:
        raise ValueError(f"{field} must be one of {CHOICES[field]}; got {value!r}")
    return value


@register_model("ncsnpp", images=True, family="score_sde")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net. forward(x [B, C, H, W], labels [B], class_labels [B] or None) ->
    [B, C, H, W]; labels are sigma for 'fourier' embeddings (VE) and time labels t * 999 for
    'positional' (VP); with num_classes > 0 a learned class vector is added to the noise
    embedding (None: the "no label" vector)."""

    def __init__(self, image_size: int = 32, num_channels: int = 3, centered: bool = True,
                 nf: int = 128,                       # base width; level i has nf * ch_mult[i]
                 ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 4,             # residual blocks per level (encoder)
                 attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1,
                 resamp_with_conv: bool = True,       # conv in Up/Downsample ('ddpm' blocks)
                 conditional: bool = True,            # feed the noise embedding to the blocks
                 nonlinearity: str = "swish",
                 embedding_type: str = "positional",  # 'fourier' (of log sigma) or 'positional'
                 fourier_scale: float = 16.0,         # std of the Fourier frequencies
                 scale_by_sigma: bool = False,        # divide the output by labels (= sigma)
                 skip_rescale: bool = True,           # residual sums divided by sqrt(2)
                 resblock_type: str = "biggan",       # 'biggan' resamples inside blocks
                 progressive: str = "none",           # output pyramid
                 progressive_input: str = "none",     # input pyramid
                 progressive_combine: str = "sum",    # how 'input_skip' merges: sum or cat
                 init_scale: float = 0.0,             # scale of each branch's last layer
                 fir: bool = False,                   # FIR filters for resampling
                 fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 conv_size: int = 3,
                 attention_type: str = "ddpm",
                 num_classes: int = 0):               # > 0: class-conditional (labels 0..n-1)
        super().__init__()
        resolutions = level_resolutions(image_size, ch_mult)
        self.embedding_type = _check_choice("embedding_type", embedding_type)
        self.resblock_type = _check_choice("resblock_type", resblock_type)
        self.progressive = _check_choice("progressive", progressive)
        self.progressive_input = _check_choice("progressive_input", progressive_input)
        combine_method = _check_choice("progressive_combine", progressive_combine)
        _check_choice("attention_type", attention_type)
        if conv_size != 3:
            raise ValueError(f"conv_size must be 3 (the only size NCSN++ uses); got {conv_size}")
        self.nf = nf
        self.centered = centered
        self.scale_by_sigma = scale_by_sigma
        self.skip_rescale = skip_rescale
        self.act = act = activation(nonlinearity)
        temb_dim = 4 * nf

        if self.embedding_type == "fourier":
            self.fourier_projection = GaussianFourierProjection(nf, fourier_scale)
            embedding_dim = 2 * nf
        else:
            self.fourier_projection = None
            embedding_dim = nf
        self.noise_mlp = NoiseLevelMLP(embedding_dim, temb_dim, act) if conditional else None
        if num_classes and not conditional:
            raise ValueError("a class-conditional ncsnpp (num_classes > 0) needs conditional=True: "
                             "the class vector joins the noise embedding")

        make_attention = partial(AttentionBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        resnet_options = dict(temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale,
                              init_scale=init_scale)
        if self.resblock_type == "ddpm":
            make_resnet = partial(ResnetBlock, act, **resnet_options)
        else:
            make_resnet = partial(BigGANResnetBlock, act, fir=fir, fir_kernel=fir_kernel,
                                  **resnet_options)
        resample_options = dict(fir=fir, fir_kernel=fir_kernel)

        self.conv_in = conv3x3(num_channels, nf)
        skip_channels = [nf]
        in_ch = nf
        input_pyramid_ch = num_channels
        self.down_levels = nn.ModuleList()
        for level, (mult, resolution) in enumerate(zip(ch_mult, resolutions)):
            parts = {"blocks": nn.ModuleList()}
            for _ in range(num_res_blocks):
                out_ch = nf * mult
                attention = make_attention(out_ch) if resolution in attn_resolutions else None
                parts["blocks"].append(ResnetWithAttention(make_resnet(in_ch, out_ch), attention))
                in_ch = out_ch
                skip_channels.append(in_ch)
            if level != len(ch_mult) - 1:
                if self.resblock_type == "ddpm":
                    parts["downsample"] = Downsample(in_ch, with_conv=resamp_with_conv,
                                                     **resample_options)
                else:
                    parts["downsample"] = make_resnet(in_ch, down=True)
                if self.progressive_input == "input_skip":
                    parts["pyramid_downsample"] = Downsample(input_pyramid_ch, **resample_options)
                    parts["pyramid_combine"] = Combine(input_pyramid_ch, in_ch, combine_method)
                    if combine_method == "cat":
                        in_ch *= 2
                elif self.progressive_input == "residual":
                    parts["pyramid_downsample"] = Downsample(
                        input_pyramid_ch, in_ch, with_conv=True, **resample_options)
                    input_pyramid_ch = in_ch
                skip_channels.append(in_ch)
            self.down_levels.append(ResolutionLevel(**self._fill(parts, _DOWN_PARTS)))

        self.mid_resnet_1 = make_resnet(in_ch)
        self.mid_attention = make_attention(in_ch)
        self.mid_resnet_2 = make_resnet(in_ch)

        output_pyramid_ch = None  # set by the coarsest level, which starts the pyramid
        self.up_levels = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            parts = {"blocks": nn.ModuleList()}
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[level]
                parts["blocks"].append(make_resnet(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if resolutions[level] in attn_resolutions:
                parts["attention"] = make_attention(in_ch)
            coarsest = level == len(ch_mult) - 1
            if self.progressive == "output_skip":
                # Each level predicts an image; coarser predictions are upsampled and added.
                if not coarsest:
                    parts["pyramid_upsample"] = Upsample(output_pyramid_ch, **resample_options)
                parts["pyramid_norm"] = group_norm(in_ch)
                parts["pyramid_conv"] = conv3x3(in_ch, num_channels, init_scale=init_scale)
                output_pyramid_ch = num_channels
            elif self.progressive == "residual":
                if coarsest:
                    parts["pyramid_norm"] = group_norm(in_ch)
                    parts["pyramid_conv"] = conv3x3(in_ch, in_ch)
                else:
                    parts["pyramid_upsample"] = Upsample(output_pyramid_ch, in_ch, with_conv=True,
                                                         **resample_options)
                output_pyramid_ch = in_ch
            if level != 0:
                if self.resblock_type == "ddpm":
                    parts["upsample"] = Upsample(in_ch, with_conv=resamp_with_conv,
                                                 **resample_options)
                else:
                    parts["upsample"] = make_resnet(in_ch, up=True)
            self.up_levels.append(ResolutionLevel(**self._fill(parts, _UP_PARTS)))
        assert not skip_channels

        if self.progressive != "output_skip":
            self.norm_out = group_norm(in_ch)
            self.conv_out = conv3x3(in_ch, num_channels, init_scale=init_scale)
        # Created last, so that reference checkpoints still map onto the modules by position.
        self.num_classes = num_classes
        self.class_embedding = class_embedding_or_none(num_classes, temb_dim)

    @staticmethod
    def _fill(parts: dict, names: Sequence[str]) -> dict:
        """`parts` in its own (creation) order, then None for every part it lacks."""
        return {**parts, **{name: None for name in names if name not in parts}}


    def _resample(self, module: nn.Module, h: torch.Tensor, temb) -> torch.Tensor:
        # BigGAN blocks resample with the noise embedding; plain Up/Downsample without it.
        return module(h, temb) if self.resblock_type == "biggan" else module(h)

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fourier_projection is not None:
            embedding = self.fourier_projection(torch.log(labels))
        else:
            embedding = sinusoidal_embedding(labels, self.nf)
        temb = self.noise_mlp(embedding) if self.noise_mlp is not None else None
        if temb is not None or class_labels is not None:  # labels without temb: refused there
            temb = add_class_embedding(temb, self.class_embedding, class_labels)
        # Data in [0, 1] is mapped to [-1, 1], the range the network was designed for.
        x = x if self.centered else 2 * x - 1.0

        input_pyramid = x
        skips = [self.conv_in(x)]
        for level in self.down_levels:
            for block in level.blocks:
                skips.append(block(skips[-1], temb))
            if level.downsample is None:
                continue
            h = self._resample(level.downsample, skips[-1], temb)
            if self.progressive_input == "input_skip":
                input_pyramid = level.pyramid_downsample(input_pyramid)
                h = level.pyramid_combine(input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = residual_sum(level.pyramid_downsample(input_pyramid), h,
                                             self.skip_rescale)
                h = input_pyramid
            skips.append(h)

        h = self.mid_resnet_1(skips[-1], temb)
        h = self.mid_attention(h)
        h = self.mid_resnet_2(h, temb)

        pyramid = None
        for level in self.up_levels:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if level.attention is not None:
                h = level.attention(h)
            if self.progressive == "output_skip":
                prediction = level.pyramid_conv(self.act(level.pyramid_norm(h)))
                if pyramid is not None:
                    prediction = level.pyramid_upsample(pyramid) + prediction
                pyramid = prediction
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = level.pyramid_conv(self.act(level.pyramid_norm(h)))
                else:
                    pyramid = residual_sum(level.pyramid_upsample(pyramid), h, self.skip_rescale)
                    h = pyramid
            if level.upsample is not None:
                h = self._resample(level.upsample, h, temb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.conv_out(self.act(self.norm_out(h)))
        if self.scale_by_sigma:
            h = h / append_dims(labels, h.ndim)
        return h

