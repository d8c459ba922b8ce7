"""A trained network to sample or score: the EMA weights of the workdir's latest checkpoint (or
`eval.checkpoint`), a score_sde_pytorch checkpoint or an EDM network pickle
(`eval.reference_checkpoint`), each checked against the run's config before it is used."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..files import checkpoints
from ..training.ema import EMA
from .plan import Plan, plan_for
from .workdir_config import check_weights_config


def load_trained(config, workdir, device, plan: Optional[Plan] = None):
    """(EMA network in eval mode, the run's SDE, step) from the workdir's latest checkpoint (or
    the one at `eval.checkpoint` when that is set), or from the score_sde_pytorch checkpoint
    named by `eval.reference_checkpoint`, whose step is reported as "reference_<step>" so that
    its outputs never overwrite those of the workdir's own run. `plan`: the run's (made from
    `config` when not given)."""
    plan = plan_for(config, plan)
    path = config.eval.get("reference_checkpoint", "")
    if str(path).endswith(".pkl"):
        return _load_edm(config, path, device), plan.sde, f"reference_{Path(path).stem}"
    if path:
        from ..published.score_sde import read_reference_checkpoint, reference_model

        checkpoint = read_reference_checkpoint(path)
        model = reference_model(checkpoint, config, source=str(path)).to(device).requires_grad_(False)
        return model, plan.sde, f"reference_{int(checkpoint.get('step', 0))}"
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


def _load_edm(config, path, device):
    """The EDM network of a pickle, after checking that the config's SDE is the one its
    preconditioning's noise levels describe."""
    from ..published.edm import load_edm_network
    from ..models.edm_precond import SDE_OF

    network = load_edm_network(path, device, allow_unknown_source=config.eval.get("edm_allow_unknown_source", False))
    kind, sde_name = type(network).__name__, SDE_OF[type(network).__name__]
    problems = []
    if config.training.sde != sde_name:
        problems.append(f"training.sde={config.training.sde!r}, but a {kind} runs under {sde_name!r}")
    if kind == "VPPrecond" and (config.model.beta_min, config.model.beta_max) != (
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
