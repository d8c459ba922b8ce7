"""NCSN++ and DDPM++ (Song et al. 2021, appendix H), registered as model `ncsnpp`: EDM's
`SongUNet` read with score_sde's config names.

The two are one computation in two weight layouts (docs/architecture.md): BigGAN residual blocks
with 1/sqrt(2) skips, GroupNorm of min(C/4, 32) groups, one-head attention, [1, 1] or FIR
[1, 3, 3, 1] resampling, an optional input pyramid (`progressive_input`: 'input_skip' is EDM's
encoder 'skip', 'residual' its 'residual') and output pyramid (`progressive='output_skip'`, EDM's
decoder 'skip'). So this class is a `SongUNet` whose weights keep EDM's names; score_sde
checkpoints are mapped onto them by role (`published.score_sde`). What it adds is score_sde's
calling convention:
- data in [0, 1] are mapped to [-1, 1] inside the network unless `centered`;
- `labels` are time labels t * 999 (VP, 'positional') or sigma (VE, 'fourier': Fourier features
  of log sigma), embedded with score_sde's arithmetic (labels reach ~1000, where another float32
  rounding order would move the phases), and the output is divided by sigma with `scale_by_sigma`;
- class labels [B] as indices, `num_classes` or None meaning "no label" (EDM's one-hot input).

score_sde options that are no part of DDPM++/NCSN++ as published (`resblock_type='ddpm'`, which
is the `ddpm` network, `skip_rescale=False`, residual output pyramids, 'cat' combination, other
nonlinearities, `conditional=False`) are refused by name. Fresh weights follow EDM's recipe
(Xavier-uniform, each branch's last layer at 1e-5), close to score_sde's (Xavier-uniform, last
layer at 1e-10): `init_scale` is accepted for its configs and must be 0.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..utils import append_dims
from .blocks import level_resolutions
from .edm_networks import FourierEmbedding, SongUNet
from .edm_unets import one_hot_or_none
from .layers import sinusoidal_embedding
from .registry import register_model

# Every option score_sde's configs carry and the only value (or values) DDPM++ / NCSN++ use.
PUBLISHED_CHOICES = {
    "resblock_type": ("biggan",),
    "skip_rescale": (True,),
    "progressive": ("none", "output_skip"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum",),
    "conditional": (True,),
    "nonlinearity": ("swish",),
    "attention_type": ("ddpm",),
    "conv_size": (3,),
    "init_scale": (0.0,),
}
_ADVICE = {"resblock_type": " (DDPM's blocks are the 'ddpm' network: model.name = 'ddpm')"}


def _swap_halves(embedding: torch.Tensor) -> torch.Tensor:
    """[a, b] -> [b, a] along dim 1: SongUNet swaps EDM's [cos, sin] to DDPM++'s [sin, cos], so a
    score_sde embedding, already [sin, cos], enters it swapped."""
    return embedding.reshape(embedding.shape[0], 2, -1).flip(1).reshape(embedding.shape)


class ScoreSdePositional(nn.Module):
    """score_sde's sinusoidal embedding of the time labels (the noise embedding of 'positional')."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return _swap_halves(sinusoidal_embedding(labels, self.num_channels))


class ScoreSdeFourier(FourierEmbedding):
    """score_sde's Gaussian Fourier features of log sigma; `freqs` is EDM's buffer of the same
    frequencies (score_sde's non-trainable `W`)."""

    def forward(self, log_sigma: torch.Tensor) -> torch.Tensor:
        phases = log_sigma[:, None] * self.freqs[None, :].to(log_sigma.dtype) * 2 * math.pi  # score_sde's order
        return torch.cat([phases.cos(), phases.sin()], dim=1)


@register_model("ncsnpp", images=True, family="score_sde")
class NCSNpp(SongUNet):
    """NCSN++ / DDPM++ U-Net. forward(x [B, C, H, W], labels [B], class_labels [B] or None) ->
    [B, C, H, W]; labels are sigma for 'fourier' embeddings (VE) and time labels t * 999 for
    'positional' (VP)."""

    def __init__(self, image_size: int = 32, num_channels: int = 3, centered: bool = True,
                 nf: int = 128,                       # base width; level i has nf * ch_mult[i]
                 ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 4,             # residual blocks per level (encoder)
                 attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1,
                 embedding_type: str = "positional",  # 'fourier' (of log sigma) or 'positional'
                 fourier_scale: float = 16.0,         # std of the Fourier frequencies
                 scale_by_sigma: bool = False,        # divide the output by labels (= sigma)
                 progressive: str = "none",           # output pyramid
                 progressive_input: str = "none",     # input pyramid
                 fir: bool = False,                   # FIR filters for resampling
                 fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 num_classes: int = 0,                # > 0: class-conditional (labels 0..n-1)
                 resblock_type: str = "biggan", skip_rescale: bool = True, progressive_combine: str = "sum",
                 conditional: bool = True, nonlinearity: str = "swish", attention_type: str = "ddpm",
                 conv_size: int = 3, init_scale: float = 0.0,
                 resamp_with_conv: bool = True):      # read by 'ddpm' blocks only, as in score_sde
        given = dict(resblock_type=resblock_type, skip_rescale=skip_rescale, progressive=progressive,
                     progressive_input=progressive_input, progressive_combine=progressive_combine,
                     conditional=conditional, nonlinearity=nonlinearity, attention_type=attention_type,
                     conv_size=conv_size, init_scale=init_scale)
        for field, value in given.items():
            value = value.lower() if isinstance(value, str) else value
            if value not in PUBLISHED_CHOICES[field]:
                raise ValueError(f"model.{field} must be one of {PUBLISHED_CHOICES[field]} for ncsnpp (DDPM++ / "
                                 f"NCSN++ as published), got {value!r}{_ADVICE.get(field, '')}")
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"model.embedding_type must be one of ('positional', 'fourier'), got {embedding_type!r}")
        level_resolutions(image_size, ch_mult)  # a size that halves cleanly, or a ValueError saying so
        fourier = embedding_type == "fourier"
        super().__init__(img_resolution=image_size, in_channels=num_channels, out_channels=num_channels,
                         label_dim=num_classes, model_channels=nf, channel_mult=tuple(ch_mult),
                         num_blocks=num_res_blocks, attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                         embedding_type=embedding_type, channel_mult_noise=2 if fourier else 1,
                         encoder_type={"none": "standard", "input_skip": "skip", "residual": "residual"}[
                             progressive_input.lower()],
                         decoder_type={"none": "standard", "output_skip": "skip"}[progressive.lower()],
                         resample_filter=tuple(fir_kernel) if fir else (1, 1))
        self.map_noise = ScoreSdeFourier(2 * nf, fourier_scale) if fourier else ScoreSdePositional(nf)
        self.fourier, self.centered, self.scale_by_sigma = fourier, centered, scale_by_sigma
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if class_labels is not None and not self.num_classes:
            raise ValueError("class labels given to an unconditional network (model.num_classes = 0)")
        x = x if self.centered else 2 * x - 1.0
        h = super().forward(x, torch.log(labels) if self.fourier else labels,
                            one_hot_or_none(class_labels, self.num_classes, x))
        return h / append_dims(labels, h.ndim) if self.scale_by_sigma else h
