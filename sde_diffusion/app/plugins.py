"""Plug-ins: modules of the user's own that register samplers, processes, networks, data sets and
losses with the package's registries, used by name from a config with no file of the package
edited (docs/plugins.md has one worked example per kind).

A plug-in is an importable module whose import registers its components (`@register_sampler`,
`@register_sde`, `@register_model`, `@register_dataset`, `@register_loss`). It is named in
`config.plugins` (a tuple of module names) or declared by an installed package as an entry point
of the group `sde_diffusion.plugins`; main.py imports both before it checks the config.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from .config import ConfigError

ENTRY_POINT_GROUP = "sde_diffusion.plugins"


def load_plugins(config) -> list:
    """Import the installed plug-ins and those `config.plugins` names; returns the module names.
    A module that cannot be imported is a ConfigError naming it and why, in one line."""
    names = list(config.get("plugins", ()) or ())
    if isinstance(config.get("plugins"), str):
        raise ConfigError(f"config.plugins: must be a tuple of module names, e.g. \"('my_plugin',)\", "
                          f"got {config.plugins!r}")
    loaded = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()
        loaded.append(entry_point.value)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - the user's module: any failure is reported, not raised
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ConfigError(f"config.plugins: cannot import {name!r}: {type(error).__name__}: "
                              f"{lines[-1] if lines else ''}") from None
        loaded.append(name)
    return loaded
