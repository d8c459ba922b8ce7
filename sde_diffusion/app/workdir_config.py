"""A workdir remembers what it trains: the config stored in every checkpoint against the config
of the run that reads it.

Training resumes only under the config that started it, up to the fields in
MAY_CHANGE_ON_RESUME: how long and how often (n_iters, the log/eval/snapshot frequencies), how
fast (threads, device, precision, channels_last, compile), what to do with a non-finite step,
the learning rate, where the data files are, and the sections that only say how to sample and
evaluate. Any other change (the SDE and its parameters, the network, the data set and its
scaling, the loss, batch size, seed, ...) changes what the weights mean or which batches come
next, and stops the run with one line listing each field with its stored and its new value.
The user's own data (an image folder, an .npz) may change under the same config: its checkpoint
also stores a fingerprint of the training split (`data_fingerprint`: size and a digest of the
contents as read), and images added, removed or altered since are such a change ("data.root's
train split"); moving or touching the files is not.
`training.resume_despite_changes=True` resumes anyway and logs every changed field as a warning.

The modes that read a trained workdir (sample, likelihood, eval, study, inpaint, colorize)
refuse a config whose WEIGHT_FIELDS differ from the checkpoint's: the wrong SDE or network
would evaluate the weights under another meaning without any error.

A run started without `--config` takes the workdir's `config.json` as its config
(`config_from_workdir`, read through `configs/workdir.py`); its command line may then override
only READING_MAY_CHANGE (a reading mode: how to sample and score, the seed, where and how fast)
or MAY_CHANGE_ON_RESUME (`--mode train`, which resumes), and anything else is refused before
the run starts (`check_stored_overrides`).
"""
from __future__ import annotations

import json
import logging
from typing import Optional

# Sections or single fields ("section.field", or "field" at the top) that may differ on resume.
MAY_CHANGE_ON_RESUME = (
    "threads", "device",
    "training.n_iters", "training.log_freq", "training.progress_seconds", "training.eval_freq",
    "training.snapshot_freq", "training.snapshot_freq_for_preemption", "training.snapshot_sampling",
    "training.num_snapshot_samples", "training.precision", "training.channels_last", "training.compile",
    "training.nonfinite", "training.nonfinite_max_skips", "training.resume_despite_changes",
    "optim.lr",
    "data.root", "data.download",
    "sampling", "eval", "study", "controllable",
)
# Fields a reading mode started from the workdir's config.json may override.
READING_MAY_CHANGE = ("seed", "device", "threads", "data.root", "data.download",
                      "sampling", "eval", "study", "controllable")
# What the weights mean: the fields sampling and scoring modes must share with the checkpoint.
WEIGHT_FIELDS = ("model", "training.sde", "training.continuous", "data.dataset", "data.image_size",
                 "data.num_channels", "data.centered")
# Model fields that change how weights were trained, not what they compute.
_NOT_WEIGHT_FIELDS = ("model.ema_rate", "model.dropout")
# How a change of the data's contents is named among the changed fields.
DATA_FIELD = "data.root's train split"


class ConfigChangedError(ValueError):
    """The config differs from the one a workdir's checkpoint was trained with."""


def _leaves(tree, prefix: str = "") -> dict:
    """{"section.field": value} of a nested dict; tuples compare as lists (the stored JSON's)."""
    if isinstance(tree, dict):
        leaves = {}
        for key, value in tree.items():
            leaves.update(_leaves(value, f"{prefix}{key}."))
        return leaves
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _matches(field: str, names) -> bool:
    return any(field == name or field.startswith(name + ".") for name in names)


def stored_config(checkpoint: dict):
    """The config a checkpoint of ours was trained with (a nested dict), or None for files that
    do not carry one (older runs, published checkpoints)."""
    text = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(text, str):
        return None
    try:
        stored = json.loads(text)
    except ValueError:
        return None
    return stored if isinstance(stored, dict) else None


def changed_fields(stored: dict, config, keep) -> list:
    """[(field, stored value, new value)] for the fields `keep(field)` selects that both configs
    have and that differ (a field only one side has, from another version, is not compared)."""
    old, new = _leaves(stored), _leaves(json.loads(config.to_json()))
    return [(field, old[field], new[field]) for field in sorted(old.keys() & new.keys())
            if keep(field) and old[field] != new[field]]


class _Said(str):
    """A value written as it is in the refusal (not quoted like a config value)."""

    def __repr__(self) -> str:
        return str(self)


def data_fingerprint(train_set) -> Optional[dict]:
    """{"size", "digest"} of a training split that has a content fingerprint, else None."""
    digest = getattr(train_set, "fingerprint", None)
    return None if digest is None else {"size": len(train_set), "digest": digest}


def _data_change(checkpoint: dict, data: Optional[dict]) -> list:
    """[("data.root's train split", stored, now)] when both sides have a fingerprint and they differ."""
    stored = checkpoint.get("data") if isinstance(checkpoint, dict) else None
    if not isinstance(stored, dict) or data is None or stored == data:
        return []

    def said(fingerprint):
        return _Said(f"{fingerprint.get('size')} items, contents {str(fingerprint.get('digest'))[:12]}")
    return [(DATA_FIELD, said(stored), said(data))]


def _describe(changes) -> str:
    return "; ".join(f"{field}: {old!r} -> {new!r}" for field, old, new in changes)


def check_resume(checkpoint: dict, config, source, data: Optional[dict] = None) -> bool:
    """Refuse to resume training from `checkpoint` (read from `source`) under a config that
    changes what the run trains, or on data whose fingerprint `data` (`data_fingerprint`)
    differs from the stored one (module docstring); with training.resume_despite_changes,
    warn instead. Returns whether the data changed (and the run resumes despite it)."""
    stored = stored_config(checkpoint)
    changes = [] if stored is None else changed_fields(stored, config,
                                                       lambda field: not _matches(field, MAY_CHANGE_ON_RESUME))
    changes += _data_change(checkpoint, data)
    if not changes:
        return False
    if config.training.get("resume_despite_changes", False):
        for field, old, new in changes:
            logging.getLogger(__name__).warning("resuming %s despite a changed %s: %r -> %r "
                                                "(training.resume_despite_changes)", source, field, old, new)
        return any(field == DATA_FIELD for field, _, _ in changes)
    raise ConfigChangedError(f"cannot resume {source}: the config differs from the one it was trained with "
                             f"({_describe(changes)}); use the original values, a new --workdir, or "
                             f"--config.training.resume_despite_changes=True to resume anyway")


def check_weights_config(checkpoint: dict, config, source) -> None:
    """Refuse to read the weights of `checkpoint` under a config whose SDE, network or data shape
    differ from those it was trained with."""
    stored = stored_config(checkpoint)
    if stored is None:
        return
    changes = changed_fields(stored, config, lambda field: _matches(field, WEIGHT_FIELDS)
                             and not _matches(field, _NOT_WEIGHT_FIELDS))
    if changes:
        raise ConfigChangedError(f"checkpoint {source} was trained with another config ({_describe(changes)}); "
                                 f"run with the values it was trained with")


def config_from_stored(stored: dict, base=None):
    """A ConfigDict of a stored config (`config.json`, a nested dict): lists become tuples again,
    a None field takes its type from `base` (the default config, where unset fields are typed
    placeholders) so that the command line can still set it, and fields `base` has that the
    stored config lacks (added since it was written) come from `base`."""
    import ml_collections

    def build(tree: dict, base_node):
        node = ml_collections.ConfigDict()
        for key, value in tree.items():
            known = isinstance(base_node, ml_collections.ConfigDict) and key in base_node
            if isinstance(value, dict):
                node[key] = build(value, base_node[key] if known else None)
            elif value is None and known and base_node.get_type(key) is not type(None):
                node[key] = ml_collections.FieldReference(None, field_type=base_node.get_type(key))
            else:
                node[key] = tuple(value) if isinstance(value, list) else value
        if isinstance(base_node, ml_collections.ConfigDict):
            for key in base_node.keys():
                if key not in tree:
                    node[key] = build({}, base_node[key]) if isinstance(base_node[key], ml_collections.ConfigDict) \
                        else base_node.get_ref(key)
        return node
    return build(stored, base)


def stored_config_path(workdir):
    from pathlib import Path
    return Path(workdir).expanduser() / "config.json"


def config_from_workdir(workdir, base=None):
    """The config `workdir`'s training run stored (its config.json) as a ConfigDict; ValueError
    naming the file when it is missing or not a config."""
    path = stored_config_path(workdir)
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: give --config, or a --workdir a training run wrote") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable config: {error}") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a config (a JSON object)")
    return config_from_stored(stored, base)


def check_stored_overrides(fields, mode: str, workdir) -> None:
    """Refuse command-line overrides `fields` ({"a.b", ...}) of a run that started from the
    workdir's config.json, where they would change what the weights mean (or, for train, what
    the resumed run trains): one line naming each field, its stored value and what may change."""
    allowed = MAY_CHANGE_ON_RESUME if mode == "train" else READING_MAY_CHANGE
    refused = sorted(field for field in fields if not _matches(field, allowed))
    if not refused:
        return
    leaves = _leaves(json.loads(config_from_workdir(workdir).to_json()))
    named = ", ".join(f"--config.{field} (stored: {leaves[field]!r})" if field in leaves else f"--config.{field}"
                      for field in refused)
    may = ", ".join(name if "." in name or name in ("seed", "device", "threads") else name + ".*"
                    for name in allowed)
    raise ConfigChangedError(f"{named}: {stored_config_path(workdir)} is what the weights were trained with; "
                             f"a {mode} run from it may change only {may}")
