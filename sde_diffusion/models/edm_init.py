"""How EDM's networks draw their starting weights (Karras et al. 2022, NVlabs/edm
`training/networks.py`): one of four fan-scaled distributions per layer, multiplied by a per-layer
factor, for the weight and, by another factor, for the bias.

The fans are a weight's: in_features / out_features for a linear map, channels x kernel^2 for a
convolution (PyTorch's convention too). The bias is drawn from the weight's distribution (same
fans) before its factor is applied, so a factor of 0 gives zeros; it is drawn even then, so that
a network built under a seed consumes the random stream as EDM's does and gets EDM's tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

# Each mode's scale from the fans: the half-width a of a uniform draw on [-a, a], the std of a normal
# one. Xavier (Glorot & Bengio 2010): std sqrt(2 / (fan_in + fan_out)); kaiming (He et al. 2015,
# without the ReLU gain): std sqrt(1 / fan_in); a uniform's half-width is sqrt(3) x its std.
_SCALES = {
    "xavier_uniform": lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out)),
    "xavier_normal": lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out)),
    "kaiming_uniform": lambda fan_in, fan_out: math.sqrt(3 / fan_in),
    "kaiming_normal": lambda fan_in, fan_out: math.sqrt(1 / fan_in),
}


def draw(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """A float32 tensor of `shape` from `mode` (EDM's `weight_init`), on the global generator."""
    if mode not in _SCALES:
        raise ValueError(f"init mode must be one of {tuple(_SCALES)}, got {mode!r}")
    scale = _SCALES[mode](fan_in, fan_out)
    if mode.endswith("uniform"):
        return scale * (torch.rand(*shape) * 2 - 1)
    return scale * torch.randn(*shape)


@dataclass(frozen=True)
class Init:
    """One layer's recipe: weights ~ `mode` x `weight`, biases ~ `mode` x `bias` (EDM's
    init_mode / init_weight / init_bias; its defaults)."""
    mode: str = "kaiming_normal"
    weight: float = 1.0
    bias: float = 0.0

    def parameters(self, weight_shape: Sequence[int], fan_in: int, fan_out: int,
                   with_bias: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The weight of `weight_shape` and, if `with_bias`, the bias [weight_shape[0]], drawn in
        that order."""
        weight = draw(weight_shape, self.mode, fan_in, fan_out) * self.weight
        bias = draw([weight_shape[0]], self.mode, fan_in, fan_out) * self.bias if with_bias else None
        return weight, bias
