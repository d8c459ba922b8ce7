"""A trained network to sample or score: the EMA weights of the workdir's latest checkpoint (or
`eval.checkpoint`), a score_sde_pytorch checkpoint or an EDM network pickle
(`eval.reference_checkpoint`), each checked against the run's config before it is used.

An EDM network comes with the noise levels it was trained on (`sigma_min`, `sigma_max`), and
EDM's `generate.py` samples it only there: its grid runs from min(sigma_max of the run,
the network's) to max(the run's end noise level, the network's sigma_min). `load_trained_run`
returns the run's Plan narrowed to them in the same way (`honour_noise_range`)."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import NamedTuple, Optional, Union

from ..files import checkpoints
from ..training.ema import EMA
from .plan import Plan, plan_for
from .progress import say
from .workdir_config import check_weights_config


class Trained(NamedTuple):
    network: object          # EMA network in eval mode (or an EDM / diffusers network)
    plan: Plan               # the run's, narrowed to the network's own noise levels
    step: Union[int, str]    # the checkpoint's step, or `reference_tag`'s for a published network


def load_trained_run(config, workdir, device, plan: Optional[Plan] = None) -> Trained:
    """`load_trained`'s network and step with the run's Plan, whose process and sampler call
    honour an EDM network's noise range (module docstring). The modes sample with this plan."""
    plan = plan_for(config, plan)
    network, _, step = load_trained(config, workdir, device, plan)
    from ..models.edm_precond import SDE_OF

    if type(network).__name__ in SDE_OF:  # EDM's preconditioned networks (not a user's with such fields)
        plan = honour_noise_range(plan, float(network.sigma_min), float(network.sigma_max),
                                  f"the {type(network).__name__} of {config.eval.reference_checkpoint}")
    return Trained(network, plan, step)


def honour_noise_range(plan: Plan, sigma_min: float, sigma_max: float, what: str) -> Plan:
    """`plan` with its grid inside the noise levels [sigma_min, sigma_max] of a network, as
    EDM's `edm_sampler` clamps its sigma_max and sigma_min: the process's top (its T) lowered to
    sigma_max where it has a `sigma_max` (edm, vesde), the end raised to sigma_min. A process
    whose top cannot move (vpsde's T = 1) and lies above sigma_max is refused in one line."""
    sde, spec = plan.sde, plan.spec
    top, end = float(sde.noise_level(sde.T)), float(sde.noise_level(spec.end(sde)))
    if top > sigma_max * (1 + 1e-6):
        settings = sde._init_kwargs()
        if "sigma_max" not in settings:
            raise checkpoints.CheckpointError(
                f"{what} was trained on noise levels up to {sigma_max:g}, but {type(sde).__name__} starts at "
                f"{top:g}: sample it under training.sde=edm (sigma(t) = t, as EDM's sampler does)")
        sde = type(sde)(**{**settings, "sigma_max": sigma_max})
    if end < sigma_min:
        end = sigma_min
    if sde is plan.sde and end == float(plan.sde.noise_level(spec.end(plan.sde))):
        return plan
    say("%s: sampled on its noise levels %g to %g, as EDM's sampler does", what, float(sde.noise_level(sde.T)), end)
    spec = dataclasses.replace(spec, eps=sde.time_of_noise_level(end), end_noise_level=None)
    return dataclasses.replace(plan, sde=sde, spec=spec)


def load_trained(config, workdir, device, plan: Optional[Plan] = None):
    """(EMA network in eval mode, the run's SDE, step) from the workdir's latest checkpoint (or
    the one at `eval.checkpoint` when that is set), or from the score_sde_pytorch checkpoint
    named by `eval.reference_checkpoint`, whose step is reported as "reference_<step>" so that
    its outputs never overwrite those of the workdir's own run. `plan`: the run's (made from
    `config` when not given). The modes use `load_trained_run`, whose plan honours an EDM
    network's noise range."""
    plan = plan_for(config, plan)
    path = config.eval.get("reference_checkpoint", "")
    if str(path).endswith(".pkl"):
        return _load_edm(config, path, device), plan.sde, reference_tag(path)
    if path and Path(path).is_dir():
        from ..published.diffusers import check_config, load_pipeline

        pipeline = load_pipeline(path, device)
        check_config(pipeline, config)  # the run's process and row are the folder's
        return pipeline.network, plan.sde, reference_tag(path)
    if path:
        from ..published.score_sde import read_reference_checkpoint, reference_model

        checkpoint = read_reference_checkpoint(path)
        model = reference_model(checkpoint, config, source=str(path)).to(device).requires_grad_(False)
        return model, plan.sde, reference_tag(path, int(checkpoint.get("step", 0)))
    if config.eval.checkpoint:
        state = checkpoints.load_checkpoint(checkpoints.snapshot_path(workdir, config.eval.checkpoint), device)
    else:
        state = checkpoints.latest_checkpoint(workdir, device)
    if state is None:
        raise checkpoints.CheckpointError(f"no checkpoint in {workdir}; train first with --mode train")
    check_weights_config(state, config, f"of step {state['step']} in {workdir}")
    model = plan.build_network().to(device)
    ema = EMA(model, config.model.ema_rate)
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise checkpoints.CheckpointError(
            f"checkpoint in {workdir} does not fit this config's model: {first_line}") from error
    return ema.averaged_model(model), plan.sde, int(state["step"])


def reference_tag(path, step: Optional[int] = None) -> str:
    """What output names call a published network: 'reference_<name>[_<step>]_<digest>', the
    file's (or pipeline folder's) name, the step it records, and 8 hex digits of its contents, so
    that two different files of one name or step never write the same outputs."""
    from ..evaluation.fid_reference import file_digest

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.blake2b(digest_size=4)
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''} {file_digest(file)}\n".encode())
    name = path.resolve().name if path.is_dir() else path.stem
    return f"reference_{name}{'' if step is None else f'_{step}'}_{digest.hexdigest()}"


def _load_edm(config, path, device):
    """The EDM network of a pickle, after checking that the config's SDE is the one its
    preconditioning's noise levels describe, or `edm` (sigma(t) = t, on which EDM's own
    sampler runs every preconditioning)."""
    from ..published.edm import load_edm_network
    from ..models.edm_precond import SDE_OF

    network = load_edm_network(path, device, allow_unknown_source=config.eval.get("edm_allow_unknown_source", False))
    kind, sde_name = type(network).__name__, SDE_OF[type(network).__name__]
    problems = []
    if config.training.sde not in (sde_name, "edm"):
        problems.append(f"training.sde={config.training.sde!r}, but a {kind} runs under 'edm' or {sde_name!r}")
    if kind == "VPPrecond" and config.training.sde == "vpsde" and (config.model.beta_min, config.model.beta_max) != (
            network.beta_min, network.beta_min + network.beta_d):
        problems.append(f"model.beta_min/beta_max={config.model.beta_min}/{config.model.beta_max}, the network's "
                        f"{network.beta_min}/{network.beta_min + network.beta_d}")
    if config.model.get("num_classes", 0) != network.label_dim:
        problems.append(f"model.num_classes={config.model.get('num_classes', 0)}, the network has {network.label_dim}")
    shape = (config.data.num_channels, config.data.image_size)
    if shape != (network.img_channels, network.img_resolution):
        problems.append(f"data.num_channels/image_size={shape[0]}/{shape[1]}, the network's "
                        f"{network.img_channels}/{network.img_resolution}")
    if problems:
        raise checkpoints.CheckpointError(f"{path} does not fit this config: {'; '.join(problems)}")
    return network
