"""EDM's U-Nets as networks of the registry: `song_unet` (DDPM++ / NCSN++ as EDM lays them out)
and `dhariwal_unet` (ADM), trainable from a config like any network here.

They are EDM's own modules (`edm_networks`), subclassed only for this package's calling
convention, so their weights keep EDM's names: a network trained here and one read from an
EDM pickle (`published.edm`, under `edm_precond`'s `model.`) have the same state dict layout.
The convention: `forward(x, labels, class_labels=None)` with `labels` the noise labels of the
preconditioning row (for `model.parameterization = "edm"`, EDM's c_noise = ln(sigma) / 4) and
`class_labels` indices [B], where index `num_classes` (or None) is "no label", EDM's zero vector.
Constructor parameters read from the config's `model` section keep EDM's names
(`model_channels`, `channel_mult`, `num_blocks`, ...); the image shape comes from `data`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .edm_networks import DhariwalUNet, SongUNet
from .registry import register_model


def one_hot_or_none(class_labels: Optional[torch.Tensor], num_classes: int, like: torch.Tensor):
    """EDM's class input: one-hot rows for labels below `num_classes`, zero rows for "no label"
    (index num_classes, or None); None for an unconditional network."""
    if not num_classes:
        return None
    one_hot = torch.zeros(like.shape[0], num_classes, device=like.device, dtype=like.dtype)
    if class_labels is not None:
        known = class_labels < num_classes
        one_hot[known.nonzero().flatten(), class_labels[known].long()] = 1.0
    return one_hot


@register_model("song_unet", images=True, family="edm")
class SongUNetNetwork(SongUNet):
    """EDM's SongUNet (their DDPM++ at the defaults: `configs/edm_cifar10.py`)."""

    def __init__(self, image_size: int = 32, num_channels: int = 3,
                 num_classes: int = 0,                       # > 0: class-conditional (labels 0..n-1)
                 model_channels: int = 128,                  # width of the first level
                 channel_mult: Sequence[int] = (2, 2, 2),    # per level (EDM's CIFAR-10 DDPM++)
                 num_blocks: int = 4,                        # residual blocks per level
                 attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10,
                 embedding_type: str = "positional",         # fourier: NCSN++
                 channel_mult_noise: int = 1,                # 2: NCSN++
                 encoder_type: str = "standard",             # residual: NCSN++
                 decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):  # (1, 3, 3, 1): NCSN++
        super().__init__(img_resolution=image_size, in_channels=num_channels, out_channels=num_channels,
                         label_dim=num_classes, model_channels=model_channels, channel_mult=tuple(channel_mult),
                         num_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions), dropout=dropout,
                         embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
                         encoder_type=encoder_type, decoder_type=decoder_type, resample_filter=tuple(resample_filter))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor, class_labels: Optional[torch.Tensor] = None):
        return super().forward(x, labels, one_hot_or_none(class_labels, self.num_classes, x))


@register_model("dhariwal_unet", images=True, family="edm")
class DhariwalUNetNetwork(DhariwalUNet):
    """EDM's DhariwalUNet (ADM; their ImageNet-64 network at the defaults)."""

    def __init__(self, image_size: int = 64, num_channels: int = 3,
                 num_classes: int = 0,                       # > 0: class-conditional (labels 0..n-1)
                 model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4),
                 num_blocks: int = 3,
                 attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10):
        super().__init__(img_resolution=image_size, in_channels=num_channels, out_channels=num_channels,
                         label_dim=num_classes, model_channels=model_channels, channel_mult=tuple(channel_mult),
                         num_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions), dropout=dropout)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor, class_labels: Optional[torch.Tensor] = None):
        return super().forward(x, labels, one_hot_or_none(class_labels, self.num_classes, x))
