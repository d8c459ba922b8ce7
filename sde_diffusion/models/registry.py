"""The score-network registry.

A network is an `nn.Module` with `forward(x, labels)` where `labels` is the per-sample noise
conditioning chosen by `models.preconditioning` (time labels for VP/sub-VP, sigma for VE). A
class-conditional network (attribute `num_classes` > 0) also takes `class_labels` [B] as a third
argument, where the index `num_classes` means "no label" (`sde_diffusion.training.guidance`). A registered
class is built from a config by its constructor's signature (`constructor_arguments`): each
parameter is read from the config's `model` section (or, for the data's shape, from `data`), and
one the config does not set keeps the constructor's default, so a network's defaults live in one
place. A class may define `from_config(config)` to build itself otherwise.

Third-party packages add networks without editing this package by declaring an entry point in
the group `sde_diffusion.models`, e.g. in their pyproject.toml:

    [project.entry-points."sde_diffusion.models"]
    theirs = "their_package.networks:TheirNet"

after which `model.name = "theirs"` works. Entry points are loaded lazily, on the first lookup of
a name that is not registered in-process.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Dict

from torch import nn

from ..utils import Registry

ENTRY_POINT_GROUP = "sde_diffusion.models"

MODELS: Registry = Registry("model")


# The config vocabularies (and weight layouts) of the U-Net families: what a network registered
# with `family=` reads from config.model, so that the application checks those fields.
FAMILIES = {"score_sde": "score_sde_pytorch's (nf, ch_mult, num_res_blocks; its checkpoints' layout)",
            "edm": "EDM's (model_channels, channel_mult, num_blocks; its pickles' layout)"}


@dataclass(frozen=True)
class NetworkFacts:
    """What a network declares where it is registered: whether it takes images ([B, C, H, W];
    else points or any flat vectors), and the family whose config fields it reads (`FAMILIES`;
    "" for a network of its own)."""
    images: bool = False
    family: str = ""


NETWORK_FACTS: Dict[str, NetworkFacts] = {}


def register_model(name: str, *, images: bool = False, family: str = ""):
    """Class decorator: `@register_model("ddpm", images=True, family="score_sde")` makes
    `model.name = "ddpm"` build that class; `images` and `family` are its `NetworkFacts`."""
    if family and family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; known: {', '.join(FAMILIES)}")
    declared = NetworkFacts(images=images, family=family)

    def decorator(cls: type) -> type:
        MODELS.register(name)(cls)
        NETWORK_FACTS[name] = declared
        return cls
    return decorator


def network_facts(name: str) -> NetworkFacts:
    """The declared facts of network `name` (an unknown name: ValueError listing the known)."""
    get_model_class(name)
    return NETWORK_FACTS.get(name, NetworkFacts())


def family_members(family: str) -> list:
    """The names of the networks registered in-process with `family=family`, sorted."""
    return sorted(name for name, facts in NETWORK_FACTS.items() if facts.family == family)


def _load_entry_point(name: str) -> None:
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name and name not in MODELS:
            MODELS[name] = entry_point.load()


def model_names() -> list:
    """Names registered in-process plus those offered by installed plug-ins."""
    plugin_names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(MODELS) | plugin_names)


def get_model_class(name: str) -> type:
    if name not in MODELS:
        _load_entry_point(name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return MODELS[name]


# Constructor parameters read from config.data (parameter -> data field); the others from config.model.
DATA_ARGUMENTS = {"image_size": "image_size", "num_channels": "num_channels", "centered": "centered",
                  "data_dim": "dim"}


def constructor_arguments(cls: type, config) -> dict:
    """The arguments of `cls(...)` that the config sets (lists as tuples)."""
    arguments = {}
    for name in inspect.signature(cls.__init__).parameters:
        section, field = (config.data, DATA_ARGUMENTS[name]) if name in DATA_ARGUMENTS else (config.model, name)
        if field in section:
            value = section[field]
            arguments[name] = tuple(value) if isinstance(value, list) else value
    return arguments


def get_model(config) -> nn.Module:
    """Build the network named by `config.model.name` from the whole config."""
    cls = get_model_class(config.model.name)
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    return cls(**constructor_arguments(cls, config))
