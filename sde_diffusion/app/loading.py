"""One call that loads any model this package can read, ready for `sampling.sample`:

    from sde_diffusion.app.loading import load_model
    from sde_diffusion.sampling import sample

    model = load_model("runs/toy")                                   # a workdir: its config.json, EMA weights
    model = load_model("checkpoint_26.pth", "configs/published/vp_cifar10_ddpmpp_continuous.py")
    model = load_model("edm-cifar10-32x32-uncond-vp.pkl", "configs/published/edm_cifar10.py")
    model = load_model("ddpm-pipeline/", "configs/published/diffusers_ddpm.py")
    x, nfe = sample(model.denoiser, model.sde, (16, *model.shape), "heun", steps=18, generator=0)
    images = model.to_data_space(x)                                  # [0, 1] for images

It is what `main.py --mode sample` does before it samples: the config (the workdir's stored one,
a config file, or a ConfigDict) is checked by `validate_config`, the weights are read and checked
against it (`trained.load_trained_run`: a workdir's latest or chosen checkpoint with its EMA
weights, a score_sde_pytorch checkpoint, an EDM pickle, a diffusers pipeline folder), and an EDM
network's grid is narrowed to its own noise levels as EDM samples it. Bad input raises the same
one-line errors as main.py (`ConfigError`, `CheckpointError`, `ValueError`)."""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..sampling import SamplerSpec
from .plan import Plan
from .trained import load_trained_run
from .validation import validate_config
from .workdir_config import config_from_workdir, stored_config_path


class LoadedModel(NamedTuple):
    denoiser: Denoiser           # D(x, t) of the network under `sde` (unguided)
    sde: SDE                     # the process to sample with (an EDM network's, narrowed to its noise levels)
    spec: SamplerSpec            # the config's sampler call (`sample(model.denoiser, model.sde, shape, model.spec)`)
    network: torch.nn.Module     # the network itself, in eval mode
    step: Union[int, str]        # the checkpoint's step, or "reference_<name>" for a published file
    plan: Plan                   # everything else the config says (data facts, device, ...)

    @property
    def shape(self) -> tuple:
        """One sample's shape ([C, H, W] for images, [dim] for points)."""
        return self.plan.data.shape

    @property
    def num_classes(self) -> int:
        """The classes of a class-conditional network (0: unconditional)."""
        return self.plan.data.num_classes

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as the samplers return them -> the data's space ([0, 1] images)."""
        return self.plan.to_data_space(x)


def read_config_file(path) -> "ml_collections.ConfigDict":  # noqa: F821
    """The `get_config()` of a config file such as configs/published/edm_cifar10.py; a file inside
    a `configs/` folder is imported with the folder's parent on the path, as main.py runs it."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    root = next((parent.parent for parent in path.parents if parent.name == "configs"), path.parent)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(f"_sde_diffusion_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config()")
    return module.get_config()


def load_model(source, config=None, *, step: int = 0, device: Optional[str] = "cpu") -> LoadedModel:
    """The model at `source` (module docstring) with its process and sampler call.
    source: a workdir a training run wrote, a score_sde_pytorch `.pth`, an EDM `.pkl` or a
    diffusers pipeline folder; config: None for a workdir (its config.json), else a config file's
    path or a ConfigDict describing the published model; step: a workdir's checkpoint step (0: the
    latest); device: where the network runs ("auto": the GPU when there is one)."""
    source = Path(source).expanduser()
    workdir = stored_config_path(source).is_file()
    if config is None:
        if not workdir:
            raise ValueError(f"{source} is not a workdir with a config.json; a published checkpoint needs its "
                             f"config (a config file such as configs/published/*.py, or a ConfigDict)")
        config = config_from_workdir(source)
    elif isinstance(config, (str, Path)):
        config = read_config_file(config)
    else:
        config = copy.deepcopy(config)
    config.device = "auto" if device is None else str(device)
    if workdir:
        config.eval.checkpoint = int(step)
        config.eval.reference_checkpoint = ""
    else:
        if step:
            raise ValueError(f"step={step} chooses among a workdir's checkpoints; {source} is one published file")
        config.eval.reference_checkpoint = str(source)
        config.eval.checkpoint = 0
    plan = validate_config(config, "sample")
    trained = load_trained_run(config, source if workdir else source.parent, plan.device, plan)
    network = trained.network.eval()
    return LoadedModel(trained.plan.denoiser(network), trained.plan.sde, trained.plan.spec, network, trained.step,
                       trained.plan)
