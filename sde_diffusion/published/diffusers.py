"""diffusers pipelines in and out: a `UNet2DModel` pipeline folder as a network, its process and
its preconditioning row, and a network of this package written as such a folder.

A folder as `DDPMPipeline.save_pretrained` writes it (`model_index.json`, `unet/config.json`,
`unet/diffusion_pytorch_model.safetensors`, `scheduler/scheduler_config.json`) is read without
running anything from it: the weights only from safetensors (never a pickled `.bin`), the
configs as JSON. The network is diffusers' own `UNet2DModel` (the optional dependency
`pip install -e ".[diffusers]"`): it reproduces the pipeline's outputs to float rounding by
construction (measured: docs/diffusers.md), where a port of ours would need checking against it
for every block type diffusers offers. The scheduler config gives the process, a `DiscreteVP`
with the same betas, and `prediction_type` gives the row of the preconditioning table:
epsilon -> noise, sample -> data, v_prediction -> v. Which sampler call reproduces which
diffusers scheduler: docs/diffusers.md; their timesteps: `published.diffusers_schedules`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..models.preconditioning import denoiser_from_model
from ..processes.denoiser import Denoiser
from ..processes.discrete_vp import BETA_SCHEDULES, DiscreteVP

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
PARAMETERIZATION_OF = {"epsilon": "noise", "sample": "data", "v_prediction": "v"}  # prediction_type -> row
PREDICTION_TYPE_OF = {row: kind for kind, row in PARAMETERIZATION_OF.items()}
# Schedulers whose config describes the training chain by these fields (the DDPM family's).
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "LMSDiscreteScheduler")
INSTALL_HINT = 'pip install -e ".[diffusers]"'


class DiffusersError(ValueError):
    """A folder or file that is not a diffusers pipeline this package reads; one line."""


class UNet2D(nn.Module):
    """diffusers' UNet2DModel as a network of this package: forward(x, labels[, class_labels])
    -> its output tensor, labels being diffusers' (fractional) timesteps."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, labels: torch.Tensor, class_labels: Optional[torch.Tensor] = None):
        return self.unet(x, labels, class_labels=class_labels).sample


class Pipeline(NamedTuple):
    """A diffusers pipeline read here: the network (`UNet2D`, eval mode), its process, its
    preconditioning row, and the two configs as read."""
    network: UNet2D
    sde: DiscreteVP
    parameterization: str
    unet_config: dict
    scheduler_config: dict

    def denoiser(self) -> Denoiser:
        """D(x, t) of the network under its process: what every sampler here takes."""
        return denoiser_from_model(self.network, self.sde, continuous=False, parameterization=self.parameterization,
                                   family="diffusers")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise DiffusersError(f"reading or writing a diffusers pipeline needs the diffusers package: {INSTALL_HINT}") from None
    return diffusers


def describe_file(path: Path) -> str:
    """What a file that is not a pipeline folder looks like, by its first bytes, and what reads it."""
    head = path.read_bytes()[:4] if path.is_file() else b""
    if head.startswith(b"PK"):
        return ("a zip archive, as torch.save writes score_sde_pytorch checkpoints (configs/published/vp_cifar10_*.py "
                "and the others of that family read those)")
    if head[:1] == b"\x80":
        return ("a Python pickle, as EDM's network pickles are (configs/published/edm_*.py read those); "
                "a diffusers pipeline is a folder with model_index.json")
    return "not a folder with model_index.json"


def _json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffusersError(f"{path.parent.parent if what != 'model_index.json' else path.parent}: no {what} "
                             "(a diffusers pipeline folder has model_index.json, unet/ and scheduler/)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiffusersError(f"{path}: not readable JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise DiffusersError(f"{path}: expected a JSON object")
    return value


def scheduler_process(config: dict) -> DiscreteVP:
    """The DiscreteVP of a diffusers scheduler config (DDPM-family fields); DiffusersError for a
    config this package cannot express."""
    kind = config.get("_class_name", "?")
    if kind not in SCHEDULERS:
        raise DiffusersError(f"scheduler {kind!r} is not one of the DDPM-family schedulers read here "
                             f"({', '.join(SCHEDULERS)})")
    if config.get("rescale_betas_zero_snr"):
        raise DiffusersError("rescale_betas_zero_snr=True puts alpha_bar = 0 at T, a noise level no process "
                             "here reaches; not supported")
    schedule, trained = config.get("beta_schedule", "linear"), config.get("trained_betas")
    if trained is None and schedule not in BETA_SCHEDULES:
        raise DiffusersError(f"beta_schedule {schedule!r} is not one of {', '.join(BETA_SCHEDULES)} (or trained_betas)")
    try:
        return DiscreteVP(N=int(config.get("num_train_timesteps", 1000)), beta_schedule=schedule,
                          beta_start=config.get("beta_start", 0.0001), beta_end=config.get("beta_end", 0.02),
                          trained_betas=trained, steps_offset=int(config.get("steps_offset", 0)))
    except ValueError as error:
        raise DiffusersError(f"scheduler config: {error}") from None


def load_pipeline(path, device=None) -> Pipeline:
    """Read the diffusers UNet2DModel pipeline folder `path` (safetensors weights only). One-line
    DiffusersError for anything else: a file (saying which family it looks like), a missing
    part, a pickled `.bin`, a UNet that is not a UNet2DModel, a scheduler config not expressed here."""
    root = Path(path)
    if not root.is_dir():
        if not root.exists():
            raise DiffusersError(f"{root}: no such folder")
        raise DiffusersError(f"{root} is a file, not a diffusers pipeline folder: it looks like {describe_file(root)}")
    index = _json(root / "model_index.json", "model_index.json")
    unet_entry = index.get("unet")
    if not (isinstance(unet_entry, list) and len(unet_entry) == 2 and unet_entry[1] == "UNet2DModel"):
        raise DiffusersError(f"{root}: its unet is {unet_entry!r}; only pipelines with a UNet2DModel "
                             f"(DDPMPipeline, DDIMPipeline, ...) are read, not text- or latent-conditioned ones")
    unet_config = _json(root / "unet" / "config.json", "unet/config.json")
    scheduler_config = _json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PARAMETERIZATION_OF:
        raise DiffusersError(f"prediction_type {prediction!r} is not one of {', '.join(PARAMETERIZATION_OF)}")
    sde = scheduler_process(scheduler_config)
    weights = root / "unet" / UNET_WEIGHTS
    if not weights.is_file():
        pickled = sorted(p.name for p in (root / "unet").glob("*.bin"))
        raise DiffusersError(f"{root / 'unet'}: no {UNET_WEIGHTS}" + (
            f"; {pickled[0]} is a pickle, which is not read (it can run code): save the pipeline with "
            "safe_serialization=True" if pickled else ""))
    network = _unet(unet_config, weights)
    return Pipeline(network.to(device).eval().requires_grad_(False), sde, PARAMETERIZATION_OF[prediction],
                    unet_config, scheduler_config)


def _unet(config: dict, weights: Path) -> UNet2D:
    diffusers = _diffusers()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    try:
        unet = diffusers.UNet2DModel.from_config(settings)
    except (TypeError, ValueError, KeyError) as error:
        raise DiffusersError(f"unet/config.json does not build a UNet2DModel: {str(error).splitlines()[0]}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise DiffusersError(f"{weights}: not a readable safetensors file ({str(error).splitlines()[0]})") from None
    expected = unet.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or extra or wrong:
        first = (f"weight {wrong[0]!r} has shape {list(state[wrong[0]].shape)}, unet/config.json builds "
                 f"{list(expected[wrong[0]].shape)}" if wrong else
                 f"key {(missing or extra)[0]!r} is {'missing from the file' if missing else 'not in the network'}")
        raise DiffusersError(f"{weights} does not fit unet/config.json: {first} ({len(missing)} missing, "
                             f"{len(extra)} extra, {len(wrong)} of another shape)")
    unet.load_state_dict(state)
    return UNet2D(unet)


# -- out: a pipeline folder diffusers reads ------------------------------------------------------
def save_pipeline(network: nn.Module, sde, folder, parameterization: str = "noise") -> Path:
    """Write `network` under `sde` as a DDPMPipeline folder (safetensors weights) that
    `diffusers.DDPMPipeline.from_pretrained(folder)` loads and samples; returns the folder.

    The network must be a diffusers UNet2DModel (a `UNet2D`, as `load_pipeline` gives, trained
    further here or not) and the process a `DiscreteVP`, whose betas become the scheduler's;
    `parameterization` (noise, data or v) its prediction_type. Other networks of this package
    are refused in one line: none has UNet2DModel's weight layout (the score_sde `ddpm` U-Net is
    the same architecture, DDPM's, but no mapping of its weights is written and checked yet).
    The folder must not exist; it appears whole or not at all."""
    if not isinstance(network, UNet2D):
        raise DiffusersError(f"a {type(network).__name__} network cannot be written as a diffusers pipeline: only "
                             "diffusers' UNet2DModel (read with load_pipeline) has a layout diffusers loads")
    if not isinstance(sde, DiscreteVP):
        raise DiffusersError(f"a diffusers pipeline runs a discrete beta chain (discrete_vp), not {type(sde).__name__}")
    if parameterization not in PREDICTION_TYPE_OF:
        raise DiffusersError(f"parameterization {parameterization!r} has no diffusers prediction_type "
                             f"(one of {', '.join(PREDICTION_TYPE_OF)})")
    target = Path(folder)
    if target.exists():
        raise DiffusersError(f"{target} exists; choose a new folder (a pipeline is written whole)")
    diffusers = _diffusers()
    chain = (dict(trained_betas=sde.trained_betas) if sde.trained_betas is not None else
             dict(beta_schedule=sde.beta_schedule, beta_start=sde.beta_start, beta_end=sde.beta_end))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=sde.table_size, steps_offset=sde.steps_offset,
                                        prediction_type=PREDICTION_TYPE_OF[parameterization], **chain)
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():  # left by an interrupted write
        shutil.rmtree(partial)
    diffusers.DDPMPipeline(unet=network.unet, scheduler=scheduler).save_pretrained(partial, safe_serialization=True)
    partial.rename(target)
    return target


def check_config(pipeline: Pipeline, config) -> None:
    """DiffusersError (one line) naming every field of a run's config (configs/published/
    diffusers_ddpm.py) that does not describe the pipeline: its process, its prediction type
    and its images."""
    model, sde = config.model, pipeline.sde
    problems = []
    if config.training.sde != "discrete_vp":
        problems.append(f"training.sde={config.training.sde!r}, a diffusers pipeline runs under 'discrete_vp'")
    wanted = dict(num_scales=sde.table_size, parameterization=pipeline.parameterization)
    if sde.trained_betas is None:
        wanted.update(beta_schedule=sde.beta_schedule, beta_start=sde.beta_start, beta_end=sde.beta_end)
    problems += [f"model.{name}={model.get(name)!r}, the folder's {value!r}" for name, value in wanted.items()
                 if model.get(name) != value]
    if model.get("steps_offset", 0) != sde.steps_offset:  # moves the leading grids
        problems.append(f"model.steps_offset={model.get('steps_offset', 0)!r}, the folder's {sde.steps_offset!r}")
    if sde.trained_betas is not None and list(model.get("trained_betas") or []) != sde.trained_betas:
        problems.append("model.trained_betas must list the folder's trained_betas")
    unet = pipeline.unet_config
    shape = (config.data.num_channels, config.data.image_size)
    if shape != (unet.get("in_channels"), unet.get("sample_size")):
        problems.append(f"data.num_channels/image_size={shape[0]}/{shape[1]}, the folder's "
                        f"{unet.get('in_channels')}/{unet.get('sample_size')}")
    if bool(unet.get("num_class_embeds")) != bool(model.get("num_classes", 0)):
        problems.append(f"model.num_classes={model.get('num_classes', 0)}, the folder's {unet.get('num_class_embeds') or 0}")
    if problems:
        raise DiffusersError(f"the pipeline does not fit this config: {'; '.join(problems)}")
