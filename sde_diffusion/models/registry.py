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
from importlib import metadata

from torch import nn

from ..utils import Registry

ENTRY_POINT_GROUP = "sde_diffusion.models"

MODELS: Registry = Registry("model")


IMAGE_NETWORKS: set = set()  # names registered with images=True: networks of [B, C, H, W] images


def register_model(name: str, *, images: bool = False):
    """Class decorator: `@register_model("ddpm", images=True)` makes `model.name = "ddpm"` build
    that class; `images` declares a network of images (else of points or any flat vectors)."""
    if images:
        IMAGE_NETWORKS.add(name)
    return MODELS.register(name)


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
