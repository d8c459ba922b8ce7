"""Config checks of image data and of the image networks' shapes, before anything is written:
sizes and channels the data can have, and the widths, levels and attention resolutions of a
network of the score_sde family (`nf`, `ch_mult`, `num_res_blocks`) or of EDM's (`model_channels`,
`channel_mult`, `num_blocks`), each under its own names: the family is what the network's
registration declares (`register_model(..., family=)`). Last, whatever the network's own
constructor refuses (`check_network_builds`), for any registered network."""
from __future__ import annotations

import math

import torch

from ..models.registry import get_model, network_facts
from .config import MAX_IMAGE_SIZE, PUBLISHED_MODELS, ConfigError, require


def positive_int(config, field: str) -> None:
    section, name = field.split(".")
    value = config[section].get(name)
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
            "must be a positive integer", value)


def positive_number(config, field: str) -> None:
    section, name = field.split(".")
    value = config[section].get(name)
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0, field, "must be a positive finite number", value)


def check_image_config(config) -> None:
    positive_int(config, "data.image_size")
    positive_int(config, "data.num_channels")
    require(config.data.image_size <= MAX_IMAGE_SIZE, "data.image_size",
            f"must be at most {MAX_IMAGE_SIZE} (the largest published score-based models' size)",
            config.data.image_size)
    require(config.data.num_channels in (1, 3), "data.num_channels", "must be 1 (gray) or 3 (RGB)",
            config.data.num_channels)
    family = "" if config.model.name in PUBLISHED_MODELS else network_facts(config.model.name).family
    if family == "score_sde":
        positive_int(config, "model.nf")
        positive_int(config, "model.num_res_blocks")
        _check_levels(config, "ch_mult", "")
    elif family == "edm":
        for field in ("model_channels", "num_blocks"):
            if field in config.model:
                positive_int(config, f"model.{field}")
        _check_levels(config, "channel_mult", " (EDM's name for the per-level widths)")


def _check_levels(config, mult_field: str, named: str) -> None:
    """The per-level width multipliers, the image size they halve and the attention resolutions."""
    model = config.model
    mult = tuple(model.get(mult_field, ()))
    require(len(mult) > 0 and all(isinstance(m, int) and m > 0 for m in mult), f"model.{mult_field}",
            f"must be a non-empty list of positive integers{named}", mult)
    size, factor = config.data.image_size, 2 ** (len(mult) - 1)
    require(size % factor == 0, "data.image_size",
            f"must be divisible by 2**(len(model.{mult_field}) - 1) = {factor} for this network", size)
    resolutions = {size // 2 ** level for level in range(len(mult))}
    for resolution in model.get("attn_resolutions", ()):
        require(resolution in resolutions, "model.attn_resolutions",
                f"each must be one of the network's resolutions {sorted(resolutions)}", tuple(model.attn_resolutions))


def check_network_builds(config) -> None:
    """Build the configured network on the meta device (no memory, no random draws), so that a
    value its constructor refuses stops the run in one line before anything is written; a
    constructor names the field by starting its message with it ("model.width must be ...").
    The networks that come from a published file are built from it later."""
    if config.model.name in PUBLISHED_MODELS:
        return
    try:
        with torch.device("meta"):
            get_model(config)
    except (ValueError, TypeError) as error:
        message = str(error)
        field, _, rest = message.partition(" ")
        if field.startswith(("model.", "data.")):  # the network names the field: the line starts with it
            raise ConfigError(f"config.{field}: {rest}") from None
        raise ConfigError(f"config.model.name: {config.model.name!r} cannot be built from this config: {message}") from None
    except (RuntimeError, NotImplementedError):
        pass  # a network whose construction needs real tensors (a plug-in's data-dependent init) is built for real later
