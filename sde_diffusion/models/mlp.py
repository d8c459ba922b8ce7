"""A time-conditioned MLP for low-dimensional data (2-D toy sets, small vectors).

Residual blocks of SiLU MLPs, each adding a projection of the noise-label embedding, as the
U-Nets do per residual block (Ho et al. 2020); a zero-initialised output layer so that every
noise level starts from the same output (eps_pred = 0) rather than from a random one.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..utils import append_dims
from .layers import GaussianFourierProjection, add_class_embedding, class_embedding_or_none, sinusoidal_embedding
from .registry import register_model


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.embed = nn.Linear(embed_dim, width)
        self.outer = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        update = self.inner(torch.nn.functional.silu(h)) + self.embed(embedding)
        return h + self.outer(torch.nn.functional.silu(update))


@register_model("mlp")
class MLP(nn.Module):
    """score-network interface: forward(x [B, ...], labels [B], class_labels [B] or None) ->
    [B, ...]. With num_classes > 0 a learned class vector joins the noise-level embedding."""

    def __init__(self, data_dim: int, width: int = 256, num_blocks: int = 4, embed_dim: int = 64,
                 embedding_type: str = "positional", fourier_scale: float = 16.0,
                 scale_by_sigma: bool = False, num_classes: int = 0):
        super().__init__()
        for name, value in (("width", width), ("num_blocks", num_blocks), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"model.embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        self.embedding_type, self.embed_dim, self.scale_by_sigma = embedding_type, embed_dim, scale_by_sigma
        if embedding_type == "fourier":
            self.fourier_projection = GaussianFourierProjection(embed_dim // 2, scale=fourier_scale)
        self.embed_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.input = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, embed_dim) for _ in range(num_blocks))
        self.output = nn.Linear(width, data_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.num_classes = num_classes
        self.class_embedding = class_embedding_or_none(num_classes, embed_dim)


    def _embed(self, labels: torch.Tensor) -> torch.Tensor:
        if self.embedding_type == "fourier":
            embedding = self.fourier_projection(torch.log(labels.float()))
        else:
            embedding = sinusoidal_embedding(labels, self.embed_dim)
        return self.embed_mlp(embedding)

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        embedding = add_class_embedding(self._embed(labels), self.class_embedding, class_labels).to(x.dtype)
        h = self.input(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, embedding)
        out = self.output(torch.nn.functional.silu(h)).reshape(x.shape)
        if self.scale_by_sigma:
            out = out / append_dims(labels.to(out.dtype), out.ndim)
        return out
