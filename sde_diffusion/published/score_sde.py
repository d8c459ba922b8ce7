"""Load the checkpoints published with the reference implementation of Song et al. 2021
(score_sde_pytorch) into this package's `ddpm` and `ncsnpp` networks.

A reference checkpoint is a dict `{"model", "ema", "optimizer", "step"}`:
- `model`: the state dict of the network wrapped in DataParallel, so every key starts with
  `module.`. The network keeps its layers in one flat list, `module.all_modules.<k>.<name>`,
  in the order it creates them, plus `module.sigmas`, its table of geometric noise levels
  sigma_max ... sigma_min (num_scales of them);
- `ema`: `{"decay", "num_updates", "shadow_params"}`, one averaged tensor per trainable
  parameter in the reference network's `parameters()` order. These are the weights the paper
  samples and evaluates with, and the ones loaded here.

`score_sde_layout` says where each of our tensors sits in that list: `ddpm` creates the
reference's layers in its order under names that say what they are, `ncsnpp` is EDM's SongUNet
and pairs with the list by role. The EMA list pairs with the checkpoint's own trainable keys in
the checkpoint's order. Every tensor on either side must find its partner with the same shape;
the first that does not is named in the error. `module.sigmas` is not a weight: it is checked
against `model.sigma_min / sigma_max / num_scales` where the network's output depends on it (VE
models, and any with `scale_by_sigma`), and is otherwise unused, as in the reference.

Conventions: the reference conditions continuous VE networks on sigma and VP networks on
t * 999 (continuous) or the chain index (discrete), as `models.preconditioning` does. Its discrete VE
(SMLD) networks instead take the index i of the nearest noise level in `sigmas` and divide by
sigmas[i]; `ChainIndexConditioned` wraps such a network so that it takes sigma like ours.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..files.checkpoints import CheckpointError, safe_load
from ..models import get_model
from ..utils import append_dims
from .score_sde_layout import PREFIX, from_reference, pieces, to_reference

NOISE_TABLE_KEY = PREFIX + "sigmas"  # the reference network's noise-level table (a buffer)


# ------------------------------------------------------------------------------- reading

def read_reference_checkpoint(path) -> dict:
    """The checkpoint at `path`, loaded with `weights_only=True` (tensors and containers, never
    code), after checking that it has the reference layout."""
    path = Path(path)
    state = safe_load(path, "cpu", what="reference checkpoint")
    _check_layout(state, path)
    return state


def _check_layout(state, path) -> None:
    def fail(reason):
        raise CheckpointError(f"{path} is not a score_sde_pytorch checkpoint: {reason}")

    if not isinstance(state, dict) or not {"model", "ema"} <= set(state):
        found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        fail(f"expected a dict with 'model' and 'ema' entries, found {found}")
    model, ema = state["model"], state["ema"]
    if not isinstance(model, dict) or not model:
        fail("its 'model' entry is not a non-empty state dict")
    if not all(isinstance(value, torch.Tensor) for value in model.values()):
        fail("its 'model' entry holds values that are not tensors")
    unprefixed = [key for key in model if not key.startswith(PREFIX)]
    if unprefixed:
        fail(f"model key {unprefixed[0]!r} lacks the {PREFIX!r} prefix the reference's DataParallel "
             f"adds (a checkpoint written by sde_diffusion itself loads from its workdir instead)")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadow):
        fail("its 'ema' entry has no list of tensors 'shadow_params'")


# ------------------------------------------------------------------------------- mapping


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))


def _first(keys: list, count: int = 3) -> str:
    shown = ", ".join(repr(key) for key in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def load_reference_weights(model: nn.Module, checkpoint: dict, source: str = "checkpoint") -> nn.Module:
    """Copy a reference checkpoint's EMA weights (and its buffers, such as the Fourier
    frequencies) into `model`, a `ddpm` or `ncsnpp` network (`score_sde_layout`); returns `model`.
    Raises CheckpointError naming the first keys that do not pair up."""
    layout = pieces(model)
    expected, weights = to_reference(model), checkpoint["model"]
    problems = []
    for key, tensor in weights.items():
        if key in expected and expected[key].shape != tensor.shape:
            ours = next(piece.ours for piece in layout if key in piece.reference)
            problems.append(f"checkpoint key {key!r} has shape {_shape(tensor)}, the network built from the "
                            f"config expects {_shape(expected[key])} (its {ours!r})")
            break
    missing = [key for key in expected if key not in weights]
    if missing:
        problems.append(f"{len(missing)} key(s) the network needs are missing from the checkpoint: "
                        f"{_first(missing)}")
    extra = [key for key in weights if key not in expected and key != NOISE_TABLE_KEY]
    if extra:
        problems.append(f"{len(extra)} checkpoint key(s) the network does not have: {_first(extra)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the network built from this config: "
                              + "; ".join(problems))
    # The shadow list follows the reference's parameters(), i.e. the order of its trainable keys
    # (not the Fourier frequencies, which it keeps as a parameter without gradient).
    parameters = dict(model.named_parameters())
    trainable = {key for piece in layout if piece.ours in parameters for key in piece.reference}
    parameter_keys = [key for key in weights if key in trainable]
    shadow = checkpoint["ema"]["shadow_params"]
    if len(shadow) != len(parameter_keys):
        raise CheckpointError(f"{source}: its EMA has {len(shadow)} shadow tensors, but its network has "
                              f"{len(parameter_keys)} parameters")
    averaged = dict(weights)
    for position, (key, average) in enumerate(zip(parameter_keys, shadow)):
        if weights[key].shape != average.shape:
            raise CheckpointError(f"{source}: EMA shadow tensor {position} has shape {_shape(average)}, "
                                  f"but its parameter {key!r} has {_shape(weights[key])}")
        averaged[key] = average
    model.load_state_dict(from_reference(model, averaged))
    return model


# ------------------------------------------------------------------------ config, wrapper


def reference_noise_table(sigma_min: float, sigma_max: float, num_scales: int) -> torch.Tensor:
    """The reference's `sigmas`: num_scales geometric levels from sigma_max down to sigma_min."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales,
                                    dtype=torch.float64))


class ChainIndexConditioned(nn.Module):
    """A reference discrete-VE (SMLD) network behind this package's VE convention.

    The reference feeds such a network the index i of the noise level, rounded from
    (T - t) (N - 1), and divides its output by sigmas[i] (`sigmas` descending from sigma_max).
    Here the label is sigma itself, so i = round((N - 1) log(sigma_max / sigma) /
    log(sigma_max / sigma_min)), the same index, since log sigma is linear in t."""

    def __init__(self, network: nn.Module, sigmas: torch.Tensor, scale_by_sigma: bool):
        super().__init__()
        self.network = network
        self.register_buffer("sigmas", sigmas.clone())
        self.scale_by_sigma = scale_by_sigma

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = torch.log(self.sigmas.double())
        fraction = (log_sigmas[0] - torch.log(sigma.double())) / (log_sigmas[0] - log_sigmas[-1])
        index = torch.round(fraction * (len(self.sigmas) - 1)).clamp(0, len(self.sigmas) - 1).long()
        h = self.network(x, index.to(x.dtype))
        if self.scale_by_sigma:
            h = h / append_dims(self.sigmas[index].to(h.dtype), h.ndim)
        return h


def reference_chain_conditioning(sde):
    """The reference code's conditioning of discrete DDPM networks, as `conditioning(t) ->
    (labels, std)` for `models.denoiser_from_model`: label t (N - 1) and the chain's std at
    step floor(t (N - 1)) (its `mutils.get_score_fn`). At t = i / (N - 1) this is chain step i
    with its own std, what DDPM trained; between such times the label moves on while the std
    stays, which is why this package's default conditioning (`VPSDE.noise_labels`) feeds the
    fractional step whose noise level is the SDE's at t instead. For reproducing the
    reference's samples exactly."""
    if not getattr(sde, "has_training_chain", False) or not hasattr(sde.chain, "alpha_bar"):
        raise ValueError(f"the reference's chain conditioning is for DDPM's VP chain, not {type(sde).__name__}")

    def conditioning(t: torch.Tensor):
        labels = t * (sde.N - 1)
        alpha_bar = sde.chain.alpha_bar.to(t.device)[labels.long().clamp(0, sde.N - 1)]
        return labels, torch.sqrt(1.0 - alpha_bar)
    return conditioning


def _check_noise_table(table: torch.Tensor, config, source: str) -> None:
    model = config.model
    expected = reference_noise_table(model.sigma_min, model.sigma_max, model.num_scales)
    fits = table.shape == expected.shape and torch.allclose(table.double(), expected, rtol=1e-4)
    if not fits:
        got = (f"{len(table)} levels from {table[0].item():.6g} to {table[-1].item():.6g}"
               if table.ndim == 1 and len(table) else f"shape {_shape(table)}")
        raise CheckpointError(
            f"{source}: its noise table {NOISE_TABLE_KEY!r} ({got}) does not match config.model."
            f"sigma_max={model.sigma_max}, sigma_min={model.sigma_min}, num_scales={model.num_scales}")


def reference_model(checkpoint: dict, config, source: str = "checkpoint") -> nn.Module:
    """The network `config` describes, carrying the checkpoint's EMA weights, in eval mode."""
    network = get_model(config)
    load_reference_weights(network, checkpoint, source)
    table = checkpoint["model"].get(NOISE_TABLE_KEY)
    ve = config.training.sde == "vesde"
    chain_indexed = ve and not config.training.continuous
    scale_by_sigma = bool(config.model.get("scale_by_sigma", False))
    if scale_by_sigma and not ve:
        # The reference would divide by its table at the time label's index; no published
        # model does this, and our networks divide by the label itself.
        raise CheckpointError(f"{source}: model.scale_by_sigma with the {config.training.sde} SDE "
                              f"has no counterpart in this package (set it only for vesde)")
    if ve:
        if table is None:
            raise CheckpointError(f"{source}: has no noise table {NOISE_TABLE_KEY!r}, which this "
                                  f"VE model needs")
        _check_noise_table(table, config, source)
    if chain_indexed:
        network.scale_by_sigma = False  # the wrapper divides by sigmas[i], as the reference does
        return ChainIndexConditioned(network, table, scale_by_sigma).eval()
    return network.eval()


def load_reference_checkpoint(path, config, device="cpu") -> nn.Module:
    """The `ddpm` / `ncsnpp` network `config` describes with the EMA weights of the
    score_sde_pytorch checkpoint at `path`, in eval mode on `device`. Errors (missing or unsafe
    file, another layout, a config that does not fit the file) raise CheckpointError."""
    checkpoint = read_reference_checkpoint(path)
    return reference_model(checkpoint, config, source=str(path)).to(device)
