"""A training run that starts from a teacher: `training.init_from` names a checkpoint of this
package (a workdir's checkpoint or snapshot file, or a workdir, whose newest checkpoint that
loads is read), and a new run starts from its EMA weights: the student's weights are the
teacher's EMA, and the student's EMA starts from them. The teacher's config must describe the
same weights as the run's (`workdir_config.check_weights_config`: process, network, data shape),
with one change allowed, the row of the preconditioning table that tunes an EDM network into a
consistency function (model.parameterization edm -> consistency: the same network F, ECT's
route). On resume the workdir's own checkpoint wins and init_from is not read.

A loss that takes paired noise (`training.loss=reflow`) trains on the teacher's (noise, sample)
pairs instead of the data set (`reflow_pairs`): generated into the workdir before the first
step, read again on resume.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import BatchStream
from ..files import checkpoints
from ..training import losses
from ..training.ema import EMA
from .config import ConfigError, require
from .progress import say
from .workdir_config import check_weights_config, stored_config

# parameterization of the run -> those of a teacher whose weights it may start from (besides its own)
STARTS_FROM = {"consistency": ("edm",)}


def check_config(config) -> None:
    """ConfigErrors of training.init_from and the reflow fields (called by `validate_config`)."""
    training = config.training
    init_from = training.get("init_from", "")
    require(not init_from or Path(init_from).expanduser().exists(), "training.init_from",
            "no such checkpoint file or workdir", init_from)
    if not losses.loss_takes(training.get("loss", "") or "dsm", "noise"):
        return
    from ..sampling import parse_spec

    require(bool(init_from), "training.init_from", "training.loss=reflow makes its pairs with a teacher: set "
            "it to the teacher's checkpoint or workdir", init_from)
    require(not config.model.get("num_classes", 0), "training.loss",
            "reflow pairs carry no labels; train an unconditional model (model.num_classes=0)", training.loss)
    pairs = training.get("reflow_pairs", 0)
    require(isinstance(pairs, int) and pairs >= training.batch_size, "training.reflow_pairs",
            f"must be an int of at least training.batch_size ({training.batch_size})", pairs)
    try:
        spec = parse_spec(training.get("reflow_sampler", ""))
    except ValueError as error:
        raise ConfigError(f"config.training.reflow_sampler: {error}") from None
    require(spec.deterministic, "training.reflow_sampler", "must be a deterministic (ODE) sampler",
            spec.method)


def teacher_checkpoint(path, device) -> tuple:
    """(checkpoint, a description of where it was read) of init_from's file or workdir."""
    path = Path(path).expanduser()
    if path.is_dir():
        state, found = checkpoints.latest_checkpoint_and_path(path, device)
        if state is None:
            raise checkpoints.CheckpointError(f"training.init_from: no checkpoint that loads in {path}")
        return state, f"{found} (step {state['step']})"
    state = checkpoints.load_checkpoint(path, device)
    return state, f"{path} (step {state['step']})"


def check_teacher(state: dict, config, source: str) -> None:
    """ConfigChangedError when the teacher's weights mean something else under `config`."""
    stored = stored_config(state) or {}
    theirs = stored.get("model", {}).get("parameterization")
    mine = config.model.get("parameterization")
    if theirs != mine and theirs in STARTS_FROM.get(mine, ()):
        config = config.copy_and_resolve_references()
        config.model.parameterization = theirs  # the same network under the row it tunes into
    check_weights_config(state, config, f"{source} (training.init_from)")


def start_from_teacher(run, path) -> None:
    """The trainer's `run` (`train._Run`, at step 0) takes the teacher's EMA weights."""
    state, source = teacher_checkpoint(path, run.device)
    check_teacher(state, run.config, source)
    try:
        run.model.load_state_dict(state["model"])  # buffers, and a start for the parameters
        averaged = EMA(run.model, run.config.model.ema_rate)
        averaged.load_state_dict(state["ema"])
        with torch.no_grad():
            averaged.copy_to(run.model)
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise checkpoints.CheckpointError(f"training.init_from {source} does not fit this config's model: "
                                          f"{first_line}") from error
    run.ema = EMA(run.model, run.config.model.ema_rate)
    say("starting from the EMA weights of %s", source)


def from_teacher(run, workdir: Path, resuming: bool, stop=None) -> None:
    """Before the first step of `run` (or its resume): init_from's weights on a new run, and for
    a loss that takes paired noise the teacher's pairs as the training data (generated now on a
    new run where they are missing, until `stop`, a `signals.StopRequest`, records a signal;
    read, and compared by their fingerprint, on resume)."""
    training = run.config.training
    if not resuming and training.get("init_from", ""):
        start_from_teacher(run, training.init_from)
    if not losses.loss_takes(training.get("loss", "") or "dsm", "noise"):
        return
    from .reflow_pairs import ensure_pairs
    from .workdir_config import data_fingerprint

    run.train_set = ensure_pairs(run, workdir, generate=not resuming, stop=stop)
    run.stream = BatchStream(len(run.train_set), training.batch_size, seed=run.config.seed)
    run.data = data_fingerprint(run.train_set)
