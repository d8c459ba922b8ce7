"""The score-network registry.

A network is an `nn.Module` with `forward(x, labels)` where `labels` is the per-sample noise
conditioning chosen by `models.score` (time labels for VP/sub-VP, sigma for VE). A
class-conditional network (attribute `num_classes` > 0) also takes `class_labels` [B] as a third
argument, where the index `num_classes` means "no label" (`sde_diffusion.guidance`). Each registered
class builds itself from a config through `from_config(config)`, the one place where config fields
become constructor arguments.

Third-party packages add networks without editing this package by declaring an entry point in
the group `sde_diffusion.models`, e.g. in their pyproject.toml:

    [project.entry-points."sde_diffusion.models"]
    theirs = "their_package.networks:TheirNet"

after which `model.name = "theirs"` works. Entry points are loaded lazily, on the first lookup of
a name that is not registered in-process.
"""
from __future__ import annotations

from importlib import metadata

from torch import nn

from ..utils import Registry

ENTRY_POINT_GROUP = "sde_diffusion.models"

MODELS: Registry = Registry("model")


def register_model(name: str):
    """Class decorator: `@register_model("ddpm")` makes `model.name = "ddpm"` build that class."""
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


def get_model(config) -> nn.Module:
    """Build the network named by `config.model.name` from the whole config."""
    return get_model_class(config.model.name).from_config(config)
