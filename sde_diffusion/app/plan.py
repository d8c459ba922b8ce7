"""The run a config describes, built once: the process (SDE), the sampler call (`SamplerSpec`),
the data's facts, the network's registered facts and the device, as one frozen `Plan`.

`validation.validate_config` checks a config and returns its Plan; main.py hands that Plan to the
mode, and the modes, the trainer and the metrics take these objects from it instead of building
them again from the config. The config stays in the Plan for the plain fields the modes read
(counts, seeds, paths, tolerances). `make_plan` builds one without the checks, for a caller (a
test, a benchmark) that has its own config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data.datasets import DATASETS, DatasetFacts, dataset_facts
from ..files.image_scaling import from_model_space
from ..models.registry import NetworkFacts, network_facts
from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..sampling import SamplerSpec
from .config import (PUBLISHED_MODELS, build_denoiser, build_model, build_sde, data_shape, load_dataset_from_config,
                     sampler_spec, select_device)


@dataclass(frozen=True)
class DataFacts:
    """The data as the modes see it: images ([C, H, W] in [0, 1], centered to [-1, 1] in the
    model's space when `centered`) or points ([dim]); `shape` is one sample's; `num_classes` the
    classes a class-conditional model learns (0: unconditional); `judge` the data set's
    registered judge (`DatasetFacts.judge`)."""
    name: str
    images: bool
    shape: tuple
    num_classes: int
    centered: bool
    judge: str = ""


@dataclass(frozen=True)
class Plan:
    """One run's objects (module docstring)."""
    config: Any                     # the config the plan was made from, for its plain fields
    device: torch.device
    sde: SDE                        # the process the model is trained and sampled with
    spec: SamplerSpec               # the configured sampler call, resolved on `sde`
    data: DataFacts
    network: NetworkFacts           # model.name's registration (default facts for an EDM pickle)

    def build_network(self) -> torch.nn.Module:
        """A fresh network of `model.name` (on the CPU)."""
        return build_model(self.config)

    def denoiser(self, network: torch.nn.Module) -> Denoiser:
        """The Denoiser of `network` under the run's SDE (`config.build_denoiser`)."""
        return build_denoiser(network, self.sde, self.config)

    def dataset(self, split: str):
        """The `split` ("train" or "test") of the configured data set."""
        return load_dataset_from_config(self.config, split, images=self.data.images)

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in the model's space -> the data's ([0, 1] images; points unchanged)."""
        return from_model_space(x, self.data.centered) if self.data.images else x


def make_plan(config, sde: Optional[SDE] = None, spec: Optional[SamplerSpec] = None) -> Plan:
    """The Plan of `config`, with `sde` and `spec` where the caller has built them already."""
    sde = build_sde(config) if sde is None else sde
    name = config.data.dataset
    facts = dataset_facts(name) if name in DATASETS else DatasetFacts()  # validate_config names an unknown one
    data = DataFacts(name=name, images=facts.images, shape=data_shape(config, facts.images),
                     num_classes=config.model.get("num_classes", 0), centered=config.data.centered, judge=facts.judge)
    network = config.model.name
    return Plan(config=config, device=select_device(config), sde=sde,
                spec=sampler_spec(config, sde) if spec is None else spec, data=data,
                network=NetworkFacts(images=facts.images) if network in PUBLISHED_MODELS else network_facts(network))


def plan_for(config, plan: Optional[Plan]) -> Plan:
    """`plan`, or when a caller has none (a test calling a mode with a config), `make_plan(config)`."""
    return make_plan(config) if plan is None else plan
