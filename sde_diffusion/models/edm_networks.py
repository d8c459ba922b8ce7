"""The networks of Karras et al. 2022 (EDM, github.com/NVlabs/edm), in this package's own code:
`SongUNet` (their re-implementation of DDPM++ / NCSN++, Song et al. 2021) and `DhariwalUNet`
(ADM, Dhariwal & Nichol 2021), with the parts they are made of.

Attribute and parameter names follow EDM's `training/networks.py`, so that the weights of its
network pickles load by name (`published.edm`); the code is written from the architecture the two
papers and EDM's file describe. A network maps (x, noise labels [B], class labels [B, label_dim]
one-hot or None) to an output of x's shape; the preconditioning (`edm_precond`) turns it into a
denoiser D(x; sigma). Fresh weights follow EDM's recipes (`edm_init`): a seeded build equals EDM's.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .edm_init import Init


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: Init = Init()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight, bias = init.parameters([out_features, in_features], in_features, out_features, bias)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D filter [1, 1, k, k] of 1-D taps, normalized to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


class Conv2d(nn.Module):
    """A convolution (kernel 0: none) with optional 2x up- or downsampling by a fixed FIR filter
    (`resample_filter`), applied before the convolution, or fused with it (`fused_resample`:
    upsampling before, downsampling after a convolution padded to keep the size)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init: Init = Init()):
        super().__init__()
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = self.bias = None
        if kernel:  # fans count the kernel's taps: channels x kernel^2
            weight, bias = init.parameters([out_channels, in_channels, kernel, kernel], in_channels * kernel ** 2,
                                           out_channels * kernel ** 2, bias)
            self.weight = nn.Parameter(weight)
            self.bias = None if bias is None else nn.Parameter(bias)
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def _resample(self, x: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
        channels = x.shape[1]
        f = self.resample_filter.to(x.dtype)
        if up:  # transposed stride-2 filtering; x4 keeps the mean (a quarter of outputs per input)
            return F.conv_transpose2d(x, (4 * f).tile(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)
        return F.conv2d(x, f.tile(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and w is not None and self.up:
            x = self._resample(x, True, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and w is not None and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._resample(x, False, 0)
        else:
            if self.up or self.down:
                x = self._resample(x, self.up, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalization with at most `num_groups` groups of at least 4 channels."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over positions, [B, C, N] each; the weights in float32."""
    weights = torch.einsum("bcq,bck->bqk", q.float(), k.float() / math.sqrt(k.shape[1])).softmax(dim=2)
    return torch.einsum("bqk,bck->bcq", weights.to(v.dtype), v)


class UNetBlock(nn.Module):
    """A residual block with the embedding's scale and shift (or bias), optional 2x resampling
    and optional self-attention, both branches scaled by `skip_scale`. `init_zero` draws the last
    layer of each branch (conv1, proj), `init_attn` the qkv projection (default: `init`)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: Optional[int] = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: Init = Init(), init_zero: Init = Init(weight=0.0), init_attn: Optional[Init] = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter,
                            init=init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), init=init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init=init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter,
                               init=init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, init=init if init_attn is None else init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, init=init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(shortcut) if self.skip is not None else shortcut)) * self.skip_scale
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            x = (self.proj(_attention(q, k, v).reshape(b, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoids of the noise label at `num_channels // 2` geometric frequencies from 1 to
    1 / max_positions (including the last when `endpoint`): [cos, sin]."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(x, (1 / self.max_positions) ** exponents.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (Tancik et al. 2020): [cos, sin] of 2 pi f x."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def _class_embedding(layer: Optional[Linear], class_labels: Optional[torch.Tensor], emb: torch.Tensor,
                     scale: float) -> torch.Tensor:
    if layer is None:
        return emb
    if class_labels is None:
        raise ValueError("this network is class-conditional: pass class_labels [B, label_dim]")
    return emb + layer(class_labels.to(emb.dtype) * scale)


def _decoder_level_start(dec: nn.ModuleDict, res: int, coarsest: bool, channels: int, block: dict) -> None:
    """What opens a decoder level in both U-Nets: the middle pair (attention, then plain) at the
    coarsest level, a 2x upsampling block at the others."""
    if coarsest:
        dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block)
        dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block)


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ as EDM lays them out: a U-Net of UNetBlocks (bias from the embedding,
    skip_scale sqrt(1/2), one attention head), `encoder_type` standard / skip / residual (the input
    pyramid), `decoder_type` standard / skip (the output pyramid), positional or Fourier noise
    embedding. Weights start Xavier-uniform with zero biases; each branch's last layer (conv1, proj,
    the output aux_conv) at 1e-5 of that, qkv at sqrt(0.2)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        for name, value, known in (("embedding_type", embedding_type, ("positional", "fourier")),
                                   ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                   ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in known:
                raise ValueError(f"SongUNet {name} must be one of {known}, got {value!r}")
        self.label_dropout = label_dropout
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        init = Init("xavier_uniform")
        init_zero = Init("xavier_uniform", weight=1e-5)
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                     init_zero=init_zero, init_attn=Init("xavier_uniform", weight=math.sqrt(0.2)))
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, init=init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, init=init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)

        self.enc = nn.ModuleDict()
        channels, aux_channels = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels, 3, init=init)
                channels = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(aux_channels, aux_channels, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_channels, channels, 1, init=init)
                elif encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(aux_channels, channels, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, init=init)
                    aux_channels = channels
            for index in range(num_blocks):
                self.enc[f"{res}x{res}_block{index}"] = UNetBlock(channels, model_channels * mult,
                                                                  attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        skips = [module.out_channels for name, module in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _decoder_level_start(self.dec, res, level == len(channel_mult) - 1, channels, block)
            for index in range(num_blocks + 1):
                attention = index == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{index}"] = UNetBlock(channels + skips.pop(), model_channels * mult,
                                                                  attention=attention, **block)
                channels = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(channels, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(channels, out_channels, 3, init=init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos], as DDPM++ trained
        emb = _class_embedding(self.map_label, class_labels, emb,
                               math.sqrt(self.map_label.in_features) if self.map_label is not None else 1.0)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, module in self.enc.items():
            if "aux_down" in name:
                aux = module(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + module(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + module(aux)) / math.sqrt(2)
            else:
                x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
                skips.append(x)

        aux, normalized = None, None
        for name, module in self.dec.items():
            if "aux_up" in name:
                aux = module(aux)
            elif "aux_norm" in name:
                normalized = module(x)
            elif "aux_conv" in name:
                out = module(F.silu(normalized))
                aux = out if aux is None else out + aux
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) as EDM lays it out: UNetBlocks with the embedding's scale and
    shift, attention heads of 64 channels at `attn_resolutions`, positional noise embedding, a
    class embedding added after the mapping's second layer. Weights and biases start uniform on
    +-1 / sqrt(fan_in) (kaiming-uniform x sqrt(1/3)); each branch's last layer (conv1, proj, out_conv)
    and map_augment at zero; map_label's entries standard normal."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = Init("kaiming_uniform", weight=math.sqrt(1 / 3), bias=math.sqrt(1 / 3))
        init_zero = Init("kaiming_uniform", weight=0.0, bias=0.0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, init=init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, init=init)
        self.map_layer1 = Linear(emb_channels, emb_channels, init=init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init=Init(weight=math.sqrt(label_dim)))
                          if label_dim else None)

        self.enc = nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels * mult, 3, init=init)
                channels = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True, **block)
            for index in range(num_blocks):
                self.enc[f"{res}x{res}_block{index}"] = UNetBlock(channels, model_channels * mult,
                                                                  attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        skips = [module.out_channels for module in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            _decoder_level_start(self.dec, res, level == len(channel_mult) - 1, channels, block)
            for index in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{index}"] = UNetBlock(channels + skips.pop(), model_channels * mult,
                                                                  attention=res in attn_resolutions, **block)
                channels = model_channels * mult
        self.out_norm = GroupNorm(channels)
        self.out_conv = Conv2d(channels, out_channels, 3, init=init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.map_layer1(F.silu(self.map_layer0(self.map_noise(noise_labels))))
        emb = F.silu(_class_embedding(self.map_label, class_labels, emb, 1.0))
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        for module in self.dec.values():
            if x.shape[1] != module.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
