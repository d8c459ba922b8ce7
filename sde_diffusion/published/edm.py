"""EDM's network pickles (NVlabs/edm `network-snapshot-*.pkl`, the published `edm-*.pkl`) loaded
without running anything they contain.

Those files are plain pickles in which every network class is a "persistent class": the record
of an object holds the source code of the module that defined its class, and EDM's own loader
executes that source to rebuild it. Here a restricted unpickler allows exactly the globals such
a file needs to describe data (its persistent-object records, tensor and storage rebuilding,
ordered dicts, torch's ModuleDict, numpy scalars and dtypes, dnnlib's EasyDict) and maps each
to an inert stand-in that only keeps what it is given; any other global stops the load. The
stored source text is never executed: records are read as data (class name, constructor
arguments, parameters, buffers), the network is rebuilt from this package's own classes
(`models.edm_precond`, `models.edm_networks`) and loaded by name, strictly (every tensor on
both sides, same shapes), and each record's class must be the class of the module at that
place in the rebuilt network. Every record's source is compared, by SHA-256, with the EDM
`training/networks.py` we reimplement: a file whose classes come from other source (another
version, or code added to it) would compute something our classes do not, so it is refused
unless the caller accepts it (`allow_unknown_source=True`, which loads it by class names,
arguments and tensor shapes, with a warning). Nothing in the file runs either way.
"""
from __future__ import annotations

import collections
import hashlib
import io
import logging
import pickle
from pathlib import Path

import torch

from ..files.checkpoints import CheckpointError, numpy_safe_globals, refusal_reason
from ..models.edm_precond import PRECONDITIONINGS

# SHA-256 of NVlabs/edm's training/networks.py as the records of its pickles store it (the
# version the shared fixtures were written with; this package's classes follow it).
KNOWN_SOURCES = {"5db27dcd96674b95c72d5e6491b879cdc35e24039ada3411b4b46a28ed1fe284": "NVlabs/edm training/networks.py"}
# EDM's persistent classes whose records may appear in a network pickle.
KNOWN_CLASSES = {"VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "SongUNet", "DhariwalUNet",
                 "UNetBlock", "Linear", "Conv2d", "GroupNorm", "PositionalEmbedding", "FourierEmbedding",
                 "VPLoss", "VELoss", "EDMLoss", "AugmentPipe"}
log = logging.getLogger(__name__)


class PersistentRecord:
    """What EDM's `_reconstruct_persistent_obj(meta)` would rebuild by running `meta`'s source:
    here just the meta dict (type, version, module_src, class_name, state)."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
            raise pickle.UnpicklingError("a persistent-object record that is not a class record")
        if meta["class_name"] not in KNOWN_CLASSES:
            raise pickle.UnpicklingError(f"a record of the class {meta['class_name']!r}, which is not one of "
                                         f"EDM's network classes")
        self.class_name, self.source = meta["class_name"], meta.get("module_src", "")
        self.state = meta.get("state") or {}


class ModuleDictRecord:
    """torch.nn.ModuleDict's pickled state, kept as data."""

    def __setstate__(self, state):
        self.state = state


class EasyDictRecord(dict):
    """dnnlib.EasyDict, a dict."""


def _storage_from_bytes(data: bytes):
    # torch's own helper would run a full unpickler on these bytes; weights_only does not
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed_globals() -> dict:
    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
        ("dnnlib.util", "EasyDict"): EasyDictRecord,
    }
    for entry in numpy_safe_globals():
        function, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        module, _, attribute = name.rpartition(".")
        allowed[(module, attribute)] = function
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    allowed = None

    def find_class(self, module, name):
        if self.allowed is None:
            type(self).allowed = _allowed_globals()
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it names the Python global {module}.{name}, which an EDM network "
                                         f"pickle does not need: loading it could run code, so it is refused")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds persistent ids (a torch.save file, not an EDM pickle)")


def read_edm_pickle(path) -> dict:
    """The pickle at `path` as data: a dict whose networks are PersistentRecords. Raises
    CheckpointError (one line) for a missing file, a file that is not a pickle, or one that
    names any global outside the allowed ones."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no EDM network pickle at {path}")
    try:
        with open(path, "rb") as file:
            data = _RestrictedUnpickler(file).load()
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a malformed pickle fails in many ways, all of them "not this file"
        # the tensors inside are read by torch's weights-only loader, whose advice is not passed on
        raise CheckpointError(f"cannot load EDM network pickle {path}: {refusal_reason(error)}") from error
    if not isinstance(data, dict) or not isinstance(data.get("ema"), PersistentRecord):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not an EDM network pickle: expected a dict with an 'ema' network, "
                              f"found {found}")
    return data


def _tensors(record, prefix: str = "") -> dict:
    """{state-dict key: tensor} of a record tree (its parameters, persistent buffers, children)."""
    state = record.state
    tensors = {}
    skipped = set(state.get("_non_persistent_buffers_set", ()))
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is not None and name not in skipped:
                tensors[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            tensors.update(_tensors(child, f"{prefix}{name}."))
    return tensors


def _check_classes(record, module: torch.nn.Module, path: str = "") -> None:
    """Each record names the class of the module at its place in the rebuilt network."""
    expected = record.class_name if isinstance(record, PersistentRecord) else "ModuleDict"
    if expected != type(module).__name__:
        raise CheckpointError(f"the record at {path or 'the top'} is a {expected}, the rebuilt network "
                              f"has a {type(module).__name__} there")
    for name, child in (record.state.get("_modules") or {}).items():
        if child is not None:
            _check_classes(child, getattr(module, name) if not isinstance(module, torch.nn.ModuleDict)
                           else module[name], f"{path}.{name}" if path else name)


def _records(record):
    """Every PersistentRecord of a tree, the top first."""
    if isinstance(record, PersistentRecord):
        yield record
    for child in (record.state.get("_modules") or {}).values():
        if child is not None:
            yield from _records(child)


def edm_network(record: PersistentRecord, source: str = "pickle", allow_unknown_source: bool = False):
    """The denoiser a preconditioning record describes, rebuilt and loaded, in eval mode."""
    precond = PRECONDITIONINGS.get(record.class_name)
    if precond is None:
        raise CheckpointError(f"{source}: its network is a {record.class_name}, not one of EDM's "
                              f"preconditionings ({', '.join(PRECONDITIONINGS)})")
    for part in _records(record):
        digest = hashlib.sha256(part.source.encode()).hexdigest()
        if digest not in KNOWN_SOURCES:
            if not allow_unknown_source:
                raise CheckpointError(f"{source}: the source stored for its {part.class_name} (sha256 {digest[:16]}) "
                                      f"is not the EDM networks.py this package reimplements (another version, "
                                      f"or added code); nothing was run. allow_unknown_source=True loads it by "
                                      f"class names, arguments and tensor shapes")
            log.warning("%s: loading a %s whose stored source (sha256 %s) we do not know, by class names, "
                        "arguments and tensor shapes", source, part.class_name, digest[:16])
    args, kwargs = record.state.get("_init_args", ()), dict(record.state.get("_init_kwargs", {}))
    try:
        network = precond(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its {record.class_name} arguments {sorted(kwargs)} do not build "
                              f"this package's network: {error}") from error
    _check_classes(record, network)
    weights = _tensors(record)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise CheckpointError(f"{source}: its weights do not fit the rebuilt {record.class_name}: "
                              f"{' '.join(line.strip() for line in first[:2])}") from error
    return network.eval().requires_grad_(False)


def load_edm_network(path, device="cpu", allow_unknown_source: bool = False) -> torch.nn.Module:
    """The EMA denoiser D(x; sigma, class_labels) of the EDM pickle at `path`, on `device`
    (a `models.edm_precond` module; `edm_denoiser` makes it this package's Denoiser)."""
    return edm_network(read_edm_pickle(path)["ema"], source=str(path),
                       allow_unknown_source=allow_unknown_source).to(device)


def edm_sampling_process(network, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
    """EDM's process sigma(t) = t (`EDMSDE`) on the noise levels EDM's `generate.py` samples
    `network` on: [max(sigma_min, network.sigma_min), min(sigma_max, network.sigma_max)] (a
    VEPrecond's 0.02 to 80; EDMPrecond's and VPPrecond's 0.002 to 80). Its `edm_sampler` is then
    `sample(edm_denoiser(network, sde), sde, shape, "heun", steps=18, end_noise_level=sde.sigma_min,
    latents=latents)` with generate.py's unit `latents`."""
    from ..processes.gaussian_paths import EDMSDE

    low = max(float(sigma_min), float(getattr(network, "sigma_min", 0.0)))
    high = min(float(sigma_max), float(getattr(network, "sigma_max", float("inf"))))
    return EDMSDE(sigma_min=low, sigma_max=high, N=N)
