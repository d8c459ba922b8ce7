"""Building blocks of the `ddpm` and `mlp` score networks: initialisation, convolutions,
normalisation, noise-level embeddings (score_sde's, which `ncsnpp` computes too) and
self-attention.

Initialisation follows DDPM (Ho et al. 2020, their TF code): variance scaling with `fan_avg` and a
uniform distribution, biases zero. A scale of 0 means 1e-10, as in the reference, so layers that
start "switched off" (the last conv of a residual branch) still receive gradients.

Parameter shapes follow the reference implementation (score_sde_pytorch), so that its checkpoints
load by position; in particular `NIN.weight` is [in, out], the transpose of `nn.Linear.weight`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..utils import append_dims

ACTIVATIONS = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
    "swish": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    """The nonlinearity named by `config.model.nonlinearity`."""
    key = name.lower()
    if key not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown nonlinearity {name!r}; known: {known}")
    return ACTIVATIONS[key]()


@torch.no_grad()
def variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """In-place DDPM initialisation: uniform with variance scale / mean(fan_in, fan_out).

    Fans are taken along dims 1 and 0 times the receptive field, like JAX's `variance_scaling`;
    with the average of the two fans the choice of which dim is "in" does not matter."""
    scale = 1e-10 if scale == 0 else scale
    receptive_field = weight[0][0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive_field / 2
    bound = math.sqrt(3 * scale / fan_avg)
    return weight.uniform_(-bound, bound)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1,
            init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    variance_scaling_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def group_norm(channels: int, num_groups: Optional[int] = None) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6. DDPM uses 32 groups; NCSN++ uses min(channels // 4, 32) so that
    narrow layers keep at least 4 channels per group."""
    groups = num_groups if num_groups is not None else min(channels // 4, 32)
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm with {groups} groups cannot split {channels} channels; "
                         f"choose nf / ch_mult so every width divides evenly")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def sinusoidal_embedding(labels: torch.Tensor, dim: int,
                         max_positions: int = 10000) -> torch.Tensor:
    """Transformer positional encoding of a per-sample scalar (Vaswani et al. 2017, sec. 3.5), as
    used for the time step by Ho et al. 2020: [sin(t w_k), cos(t w_k)] with w_k geometric from 1
    to 1/max_positions. labels: [B] -> [B, dim].

    The arithmetic is ordered as in the reference: labels reach ~1000, so a different float32
    rounding of t * w_k would move the phases by ~1e-4."""
    half = dim // 2
    log_step = math.log(max_positions) / (half - 1)
    steps = torch.arange(half, dtype=torch.float32, device=labels.device)
    frequencies = torch.exp(steps * -log_step)
    phases = labels.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(phases), torch.cos(phases)], dim=1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of log(sigma) (Tancik et al. 2020; Song et al. 2021, appendix H.1):
    [sin(2 pi w log sigma), cos(2 pi w log sigma)] with w ~ N(0, scale^2), fixed at creation.

    `frequencies` is a persistent buffer, not trained; the reference keeps it as a parameter with
    requires_grad=False (key `all_modules.0.W`), which its EMA skips."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(embedding_size) * scale)

    def forward(self, log_sigma: torch.Tensor) -> torch.Tensor:
        # Same operation order as the reference: phases reach ~1e3 and sin() amplifies rounding.
        phases = log_sigma[:, None] * self.frequencies[None, :] * 2 * math.pi
        return torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1)


class NoiseLevelMLP(nn.Module):
    """Two dense layers turning the label embedding into the conditioning vector every residual
    block reads (Ho et al. 2020): dense_1(act(dense_0(embedding)))."""

    def __init__(self, embedding_dim: int, hidden_dim: int, act: nn.Module):
        super().__init__()
        self.dense_0 = dense(embedding_dim, hidden_dim)
        self.dense_1 = dense(hidden_dim, hidden_dim)
        self.act = act

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.dense_1(self.act(self.dense_0(embedding)))


class NIN(nn.Module):
    """Per-pixel linear map over channels ("network in network", i.e. a 1x1 conv), with weight
    stored [in, out] as in the DDPM TF code and the reference."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling_(torch.empty(in_ch, out_ch), init_scale))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("bc...,co->bo...", x, self.weight)
        return out + append_dims(self.bias, out.ndim - 1)


def residual_sum(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """x + h, divided by sqrt(2) when rescaling skips (Song et al. 2021, appendix H: keeps the
    variance of a sum of two unit-variance branches at one, as in BigGAN / StyleGAN2)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over pixels with a residual connection (Ho et al. 2020; Wang
    et al. 2018 non-local block): softmax(q^T k / sqrt(C)) weighs the values of all positions.

    Parameter order (norm, query, key, value, output) is the reference's
    (GroupNorm_0, NIN_0, NIN_1, NIN_2, NIN_3)."""

    def __init__(self, channels: int, num_groups: Optional[int] = None, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.query = NIN(channels, channels)
        self.key = NIN(channels, channels)
        self.value = NIN(channels, channels)
        self.output = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        h = self.norm(x)
        query, key, value = (proj(h).flatten(2) for proj in (self.query, self.key, self.value))
        logits = torch.einsum("bci,bcj->bij", query, key) * channels ** -0.5
        weights = torch.softmax(logits, dim=-1)
        h = torch.einsum("bij,bcj->bci", weights, value).reshape(x.shape)
        return residual_sum(x, self.output(h), self.skip_rescale)


class ClassEmbedding(nn.Module):
    """A learned vector per class label, added to the noise-level embedding (Ho & Salimans 2022,
    classifier-free guidance). Index `num_classes` is reserved for "no label": training swaps a
    sample's label for it with probability `training.cond_drop_prob`, so one network learns the
    conditional and the unconditional score. Zero-initialised, so training starts from a network
    that ignores the label, as an unconditional one would."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a class embedding needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, class_labels: Optional[torch.Tensor], batch_size: int,
                device: torch.device) -> torch.Tensor:
        """[B, dim]; class_labels None means "no label" for the whole batch."""
        if class_labels is None:
            class_labels = torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)
        return self.table(class_labels.to(device=device, dtype=torch.long))


def class_embedding_or_none(num_classes: int, dim: int) -> Optional[ClassEmbedding]:
    """The class embedding of a class-conditional network, None for an unconditional one
    (num_classes = 0), which so keeps exactly the parameters reference checkpoints hold."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}")
    return ClassEmbedding(num_classes, dim) if num_classes else None


def add_class_embedding(temb: torch.Tensor, embedding: Optional[ClassEmbedding],
                        class_labels: Optional[torch.Tensor]) -> torch.Tensor:
    """temb plus the class vectors of `class_labels`; an unconditional network (no embedding)
    refuses labels rather than silently ignoring them."""
    if embedding is None:
        if class_labels is not None:
            raise ValueError("class labels given to an unconditional network (model.num_classes = 0)")
        return temb
    return temb + embedding(class_labels, temb.shape[0], temb.device).to(temb.dtype)
