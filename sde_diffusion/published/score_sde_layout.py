"""Where each tensor of this package's `ddpm` and `ncsnpp` networks sits in a score_sde_pytorch
checkpoint.

The reference network keeps its layers in one flat list, `module.all_modules.<k>.<name>`, in the
order its construction loops create them. `reference_layout(model)` walks the same loops over our
network and returns, per entry of that list, its kind ('resnet', 'attention', 'conv', ...) and the
`Piece`s that pair our tensors with the entry's keys:
- `ddpm` creates its layers in the reference's order under names that say what they are
  (`models/ddpm.py`), so every piece is a rename;
- `ncsnpp` is EDM's `SongUNet` (`models/ncsnpp.py`), whose modules are the reference's by role:
  a residual block's GroupNorm_0 / Conv_0 / Dense_0 / GroupNorm_1 / Conv_1 / Conv_2 are norm0 /
  conv0 / affine / norm1 / conv1 / skip; an attention entry (GroupNorm_0 and four NIN layers, whose
  W is [in, out]) is the norm2 / qkv / proj of the block it follows, with q, k and v interleaved in
  qkv's output channels (channel 3i + j is channel i of q, k, v for j = 0, 1, 2); the encoder's
  downsampling block opens the next level in SongUNet (`<res>x<res>_down`), and the decoder's
  upsampling block the next finer one (`_up`); the middle blocks are `_in0` / `_in1`.
`from_reference` and `to_reference` convert whole state dicts with it, in both directions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..models.blocks import ResnetBlock, ResnetWithAttention, ResolutionLevel
from ..models.ddpm import DDPM
from ..models.edm_networks import UNetBlock
from ..models.layers import NIN, AttentionBlock, NoiseLevelMLP
from ..models.ncsnpp import NCSNpp
from ..models.resampling import Downsample, Upsample

PREFIX = "module."  # DataParallel's prefix on every reference key


@dataclass(frozen=True)
class Piece:
    """One of our tensors and the reference tensors it is made of. form: 'same' (one tensor, as
    it is), 'nin' (a NIN weight [in, out] that is our 1x1 conv [out, in, 1, 1]) or 'qkv' (three NIN
    weights or biases, query, key, value, that are our interleaved qkv)."""
    ours: str
    reference: Tuple[str, ...]
    form: str = "same"

    def to_ours(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.form == "same":
            return tensors[0]
        if self.form == "nin":
            return tensors[0].T.reshape(*tensors[0].T.shape, 1, 1)
        stacked = torch.stack([t.T if t.ndim == 2 else t for t in tensors], dim=1)  # [C, 3, (C)]
        return stacked.reshape(-1, *stacked.shape[2:], *((1, 1) if stacked.ndim == 3 else ()))

    def to_reference(self, tensor: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.form == "same":
            return (tensor,)
        if self.form == "nin":
            return (tensor.reshape(tensor.shape[:2]).T,)
        if tensor.ndim == 1:
            return tuple(tensor.reshape(-1, 3).unbind(1))
        channels = tensor.shape[1]
        return tuple(w.T for w in tensor.reshape(channels, 3, channels).unbind(1))


Entry = Tuple[str, List[Piece]]  # (kind, pieces) of one all_modules entry


def reference_layout(model: nn.Module) -> List[Entry]:
    """The reference's `all_modules` for `model`, a `ddpm` or unconditional `ncsnpp` network."""
    if isinstance(model, NCSNpp):
        if model.num_classes:
            raise ValueError("score_sde_pytorch has no class-conditional ncsnpp: no reference layout")
        return _SongLayout(model).entries
    if isinstance(model, DDPM):
        return [(_kind(unit), [Piece(f"{path}.{key}", (f"{PREFIX}all_modules.{index}.{_inner_key(unit, key)}",))
                               for key in unit.state_dict()])
                for index, (path, unit) in enumerate(_ddpm_units(model))]
    raise ValueError(f"reference checkpoints exist for the ddpm and ncsnpp networks only, not {type(model).__name__}")


def pieces(model: nn.Module) -> List[Piece]:
    return [piece for _, entry in reference_layout(model) for piece in entry]


def from_reference(model: nn.Module, weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict from reference-keyed tensors (`weights` must hold every key of the layout);
    what the reference does not store (SongUNet's fixed resampling filters) is `model`'s own."""
    state = model.state_dict()
    state.update({piece.ours: piece.to_ours([weights[key] for key in piece.reference]) for piece in pieces(model)})
    return state


def to_reference(model: nn.Module, state: Dict[str, torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The reference-keyed tensors of our state dict (`model`'s own by default), in the order the
    reference's state dict lists them."""
    state = model.state_dict() if state is None else state
    converted = {}
    for _, entry in reference_layout(model):
        tensors = {}
        for piece in entry:
            tensors.update(zip(piece.reference, piece.to_reference(state[piece.ours])))
        converted.update({key: tensors[key] for key in sorted(tensors, key=_reference_rank(tensors))})
    return converted


def _reference_rank(keys):
    """Sort key for one entry's keys in the reference's order: its layers as created (here, as
    first met: an attention block's three qkv layers in their order), weight before bias."""
    layers = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))
    return lambda key: (layers.index(key.rsplit(".", 1)[0]), key.rsplit(".", 1)[1] in ("bias", "b"))


# ------------------------------------------------------------------------------------ ncsnpp
_RESNET = {"norm0": "GroupNorm_0", "conv0": "Conv_0", "affine": "Dense_0", "norm1": "GroupNorm_1",
           "conv1": "Conv_1", "skip": "Conv_2"}


class _SongLayout:
    """score_sde's ncsnpp construction loops (its models/ncsnpp.py), over a SongUNet's modules."""

    def __init__(self, net: NCSNpp):
        self.net, self.entries = net, []
        names = list(net.enc)
        resolution = int(names[0].split("x")[0])
        levels = sum(1 for name in names if name.endswith("_block0"))
        blocks = sum(1 for name in names if name.startswith(f"{resolution}x{resolution}_block"))
        input_pyramid = next((kind for kind in ("aux_skip", "aux_residual") if any(kind in n for n in names)), None)
        output_pyramid = any("aux_up" in name for name in net.dec)
        if net.fourier:
            self._add("fourier", [("map_noise.freqs", "W")])
        self._add("dense", _weight_and_bias("map_layer0", ""))
        self._add("dense", _weight_and_bias("map_layer1", ""))
        self._add("conv", _weight_and_bias(f"enc.{resolution}x{resolution}_conv", ""))
        for level in range(levels):
            res = resolution >> level
            for index in range(blocks):
                self._block(f"enc.{res}x{res}_block{index}")
            if level < levels - 1:
                down = f"enc.{res // 2}x{res // 2}"
                self._block(f"{down}_down")
                if input_pyramid == "aux_skip":  # the reference's Combine (its pyramid resampler has no weights)
                    self._add("combine", _weight_and_bias(f"{down}_aux_skip", "Conv_0."))
                elif input_pyramid == "aux_residual":  # its pyramid_downsample with a fused FIR conv
                    self._add("down", _weight_and_bias(f"{down}_aux_residual", "Conv2d_0."))
        coarsest = resolution >> (levels - 1)
        self._block(f"dec.{coarsest}x{coarsest}_in0")
        self._block(f"dec.{coarsest}x{coarsest}_in1")
        for level in reversed(range(levels)):
            res = resolution >> level
            for index in range(blocks + 1):
                self._resnet(f"dec.{res}x{res}_block{index}")
            if self._module(f"dec.{res}x{res}_block{blocks}").num_heads:
                self._attention(f"dec.{res}x{res}_block{blocks}")
            if output_pyramid:  # each level's prediction (the upsampler between them has no weights)
                self._output(f"dec.{res}x{res}")
            if level > 0:
                self._block(f"dec.{2 * res}x{2 * res}_up")
        if not output_pyramid:
            self._output(f"dec.{resolution}x{resolution}")

    def _module(self, path: str) -> nn.Module:
        return self.net.get_submodule(path)

    def _add(self, kind: str, pairs) -> None:
        """An entry of (our key, its key inside the entry or a tuple of them[, form]) pairs."""
        index, entry = len(self.entries), []
        for ours, inner, *form in pairs:
            inner = (inner,) if isinstance(inner, str) else inner
            entry.append(Piece(ours, tuple(f"{PREFIX}all_modules.{index}.{name}" for name in inner), *form))
        self.entries.append((kind, entry))

    def _block(self, path: str) -> None:
        """A SongUNet block: the reference's residual block, then its attention block if it has one."""
        self._resnet(path)
        if self._module(path).num_heads:
            self._attention(path)

    def _resnet(self, path: str) -> None:
        has_skip = self._module(path).skip is not None
        self._add("resnet", [pair for ours, theirs in _RESNET.items() if ours != "skip" or has_skip
                             for pair in _weight_and_bias(f"{path}.{ours}", f"{theirs}.")])

    def _attention(self, path: str) -> None:
        self._add("attention", [
            *_weight_and_bias(f"{path}.norm2", "GroupNorm_0."),
            (f"{path}.qkv.weight", ("NIN_0.W", "NIN_1.W", "NIN_2.W"), "qkv"),
            (f"{path}.qkv.bias", ("NIN_0.b", "NIN_1.b", "NIN_2.b"), "qkv"),
            (f"{path}.proj.weight", "NIN_3.W", "nin"), (f"{path}.proj.bias", "NIN_3.b")])

    def _output(self, level: str) -> None:
        """GroupNorm and conv3x3 to the image: the last layers, or one level of the output pyramid."""
        self._add("norm", _weight_and_bias(f"{level}_aux_norm", ""))
        self._add("conv", _weight_and_bias(f"{level}_aux_conv", ""))


def _weight_and_bias(ours: str, theirs: str) -> list:
    return [(f"{ours}.weight", f"{theirs}weight"), (f"{ours}.bias", f"{theirs}bias")]


# -------------------------------------------------------------------------------------- ddpm
_DDPM_CHILDREN = {
    ResnetBlock: {"norm_in": "GroupNorm_0", "conv_in": "Conv_0", "noise_projection": "Dense_0",
                  "norm_out": "GroupNorm_1", "conv_out": "Conv_1", "skip": "NIN_0"},
    AttentionBlock: {"norm": "GroupNorm_0", "query": "NIN_0", "key": "NIN_1", "value": "NIN_2", "output": "NIN_3"},
    Upsample: {"conv": "Conv_0"},
    Downsample: {"conv": "Conv_0"},
}
_CONTAINERS = (nn.ModuleList, ResolutionLevel, ResnetWithAttention, NoiseLevelMLP)  # flat in the reference
_KINDS = ((nn.Linear, "dense"), (ResnetBlock, "resnet"), (AttentionBlock, "attention"), (Downsample, "down"),
          (Upsample, "up"), (nn.GroupNorm, "norm"), (nn.Conv2d, "conv"))


def _ddpm_units(module: nn.Module, prefix: str = ""):
    """(our module path, module) for each entry of the reference's `all_modules`, in order: our
    containers are walked through, the shared activation is no entry."""
    for name, child in module.named_children():
        if name == "act":
            continue
        if isinstance(child, _CONTAINERS):
            yield from _ddpm_units(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _inner_key(unit: nn.Module, key: str) -> str:
    """A key of `unit.state_dict()` in the reference's naming."""
    *path, tensor = key.split(".")
    module, names = unit, []
    for name in path:
        names.append(_DDPM_CHILDREN[type(module)][name])
        module = getattr(module, name)
    names.append({"weight": "W", "bias": "b"}[tensor] if isinstance(module, NIN) else tensor)
    return ".".join(names)


def _kind(unit: nn.Module) -> str:
    return next(kind for cls, kind in _KINDS if isinstance(unit, cls))
