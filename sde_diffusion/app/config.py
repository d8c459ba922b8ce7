"""Turning an ml_collections config into the library's plain objects (SDE, network, score
function, loss, the sampler call); `validation` checks a config before any of this runs.

Library modules take plain arguments (a model's constructor and an SDE's `from_config` read a
config section by their own signatures); this module, `validation` and the application's modes
are the readers of config fields.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from ..training import losses
from ..data.datasets import DATASETS, dataset_facts, load_dataset
from ..training.distributed import rank_device
from ..processes.denoiser import Denoiser
from ..models import denoiser_from_model, get_model
from ..models.edm_precond import Preconditioned, edm_denoiser
from ..sampling import SAMPLERS, SCHEDULES, SamplerSpec, sampler_option_names, schedule_option_names, with_settings
from ..sampling.spec import GRID_FIELDS, SamplerOptionError
from ..processes.sdes import SDES, SDE

# model.name of a network that only comes from an EDM pickle (eval.reference_checkpoint = *.pkl)
EDM_PICKLE_MODEL = "edm"
# model.name of a network read from a diffusers pipeline folder (eval.reference_checkpoint = DIR)
DIFFUSERS_MODEL = "diffusers"
PUBLISHED_MODELS = (EDM_PICKLE_MODEL, DIFFUSERS_MODEL)  # networks that only come from a published file
MAX_IMAGE_SIZE = 1024  # pixels per side; beyond it a run cannot fit in any GPU's memory at a useful batch


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def require(condition: bool, field: str, message: str, value) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}, got {value!r}")


def is_image_data(config) -> bool:
    return config.data.dataset in DATASETS and dataset_facts(config.data.dataset).images


# -- builders -------------------------------------------------------------------------------

def select_device(config) -> torch.device:
    """The configured device; under torchrun a bare "cuda" is this process's GPU, cuda:LOCAL_RANK."""
    if config.device == "auto":
        return rank_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return rank_device(torch.device(config.device))


def build_sde(config) -> SDE:
    """The SDE the model is trained with (its registered constructor reads `config.model`); its
    N is the training chain (model.num_scales)."""
    return SDES.get_or_raise(config.training.sde).from_config(config.model)


def build_model(config) -> torch.nn.Module:
    return get_model(config)


def build_denoiser(model: torch.nn.Module, sde: SDE, config) -> Denoiser:
    """The Denoiser of a network under `sde`: a network of our registry by its preconditioning
    row and noise labels, an EDM network (`eval.reference_checkpoint` = .pkl) by its own."""
    if isinstance(model, Preconditioned):
        return edm_denoiser(model, sde, num_classes=model.label_dim)
    conditioning = None
    if config.model.get("discrete_labels", "noise_level") == "reference":
        from ..published.score_sde import reference_chain_conditioning
        conditioning = reference_chain_conditioning(sde)
    return denoiser_from_model(model, sde, continuous=config.training.continuous, conditioning=conditioning,
                               parameterization=config.model.get("parameterization") or None,
                               family=network_family(config, sde))


def network_family(config, sde: SDE) -> str:
    """The run's model family (`Denoiser.family`, which `build_denoiser` gives its denoiser and
    `sampler_spec` its sampler call): a published network's source (eval.reference_checkpoint:
    "edm" for a .pkl, "diffusers" for a pipeline folder, "score_sde" otherwise), sampled as its
    authors sample it; else what the network trained here predicts (model.parameterization or
    the SDE's default row)."""
    path = str(config.eval.get("reference_checkpoint", "") or "")
    if path:
        return "edm" if path.endswith(".pkl") else "diffusers" if Path(path).is_dir() else "score_sde"
    return config.model.get("parameterization") or sde.default_parameterization


def build_loss(config, sde: SDE) -> Callable:
    """loss(score_fn, x, generator, class_labels=None, shard=None, step=0, noise=None) -> scalar,
    the training objective the config names (class_labels: those of a class-conditional model's
    batch; `shard`: see losses; `step`: the training step, passed to a loss that takes it, such
    as ECT's; `noise`: the noise paired with each row of x, for a loss that takes it: reflow)."""
    training = config.training
    kind = training.get("loss", "") or "dsm"
    per_step = ()
    if training.continuous:  # a registered loss, with the options its signature names from config.training
        loss = partial(losses.LOSSES.get_or_raise(kind),
                       **{name: training[name] for name in losses.loss_options(kind) if name in training})
        per_step = tuple(name for name in ("step", "noise") if losses.loss_takes(kind, name))
    elif training.sde == "vpsde":
        loss = partial(losses.ddpm_loss, reduce_mean=training.reduce_mean)
    else:
        loss = partial(losses.smld_loss, reduce_mean=training.reduce_mean)

    def objective(score_fn, x, generator, class_labels=None, shard=None, step=0, noise=None):
        given = {"step": step, "noise": noise}
        return loss(score_fn, sde, x, generator=generator, class_labels=class_labels, shard=shard,
                    **{name: given[name] for name in per_step})
    return objective


# sampling.* fields that describe the run (how many, in which batches, which classes), not the
# sampler call.
RUN_FIELDS = ("method", "num_samples", "batch_size", "labels", "guidance_scale", "seeds")


def sampler_spec(config, sde: Optional[SDE] = None) -> SamplerSpec:
    """The configured sampler call, the one description that sample, eval, snapshots, inpaint
    and colorize run: `sampling.method` with the `sampling.*` fields that are set (None = the
    sampler's default). A field naming another sampler's option is left out: a config file sets
    up its own sampler and can still be run with another method (on the command line, such an
    option is an error: `check_sampler_options`); a schedule option that the resolved schedule
    does not take is a ConfigError naming the field. `sde`: the run's SDE, whose noise levels
    place an unset eps (None: built here, or left out when the config's cannot be built). The
    options the sampler declares for the network's family (`network_family`) are filled in
    where the config sets none, so the run's summary and file names show them."""
    sampling = config.sampling
    method = sampling.method
    own = set(sampler_option_names(method)) if method in SAMPLERS else set()
    schedule_fields = {name for schedule in SCHEDULES for name in schedule_option_names(schedule)}
    values = {name: value for name, value in sampling.items() if name not in RUN_FIELDS and value is not None
              and (name in GRID_FIELDS or name in schedule_fields or name in own)}
    spec = with_settings(SamplerSpec(method), values)
    schedule = spec.schedule or spec.traits.schedule
    for name in spec.schedule_options:
        require(name in schedule_option_names(schedule), f"sampling.{name}",
                 f"the {schedule} schedule (sampler {method}'s grid) does not take it; unset it or set "
                 f"sampling.schedule to one that does", spec.schedule_options[name])
    if sde is None:
        try:
            sde = build_sde(config)
        except (KeyError, ValueError):  # validate_config names what is wrong with the SDE
            pass
    try:
        spec = spec.resolved(sde=sde)
    except SamplerOptionError as error:
        raise ConfigError(f"config.sampling.{error.option}: {error}") from None
    except ValueError as error:
        raise ConfigError(f"config.sampling: {error}") from None
    return spec.for_family(network_family(config, sde)) if sde is not None else spec


def check_sampler_options(config, given) -> None:
    """ConfigError for a sampling.* option of another sampler that the command line sets
    (`given`: the config fields named there, such as "sampling.order"): the chosen sampler would
    not read it, and a setting nobody reads is a setting silently dropped. Options a config file
    sets for its own sampler stay in the file when the command line picks another sampler."""
    method = config.sampling.method
    if method not in SAMPLERS:
        return  # validate_config names the unknown sampler
    own = set(sampler_option_names(method))
    schedule_fields = {name for schedule in SCHEDULES for name in schedule_option_names(schedule)}
    for field in sorted(given):
        section, _, name = field.partition(".")
        if section != "sampling" or name in RUN_FIELDS or name in GRID_FIELDS or name in schedule_fields:
            continue
        if name not in own and config.sampling.get(name) is not None:
            takers = sorted(other for other in SAMPLERS if name in sampler_option_names(other))
            raise ConfigError(f"config.sampling.{name}: sampler {method} has no option {name} "
                              f"(it takes {', '.join(sorted(own)) or 'none'}; {name} is an option of "
                              f"{', '.join(takers) or 'no sampler'})")


# the modes that sample a class-conditional model towards sampling.labels with guidance_scale;
# the others (likelihood, study, inpaint, colorize) use its "no label" prediction
LABELLED_MODES = ("train", "sample", "eval")


def check_class_fields(mode: Optional[str], given) -> None:
    """ConfigError for sampling.labels or sampling.guidance_scale set on the command line
    (`given`, as in `check_sampler_options`) for a mode that does not read them: a label that
    is silently dropped would give unconditional results under a name that looks conditional."""
    for field in ("sampling.labels", "sampling.guidance_scale"):
        if field in given and mode not in (None,) + LABELLED_MODES:
            raise ConfigError(f"config.{field}: --mode {mode} does not read it (it uses the model's "
                              f"'no label' prediction; only {' and '.join(LABELLED_MODES[1:])} sample by class); "
                              "leave it out")


def data_shape(config, images: Optional[bool] = None) -> tuple:
    """Shape of one sample: (C, H, W) for images, (2,) for 2-D point sets (`images`: as in
    `load_dataset_from_config`)."""
    if is_image_data(config) if images is None else images:
        return (config.data.num_channels, config.data.image_size, config.data.image_size)
    return (config.data.dim,)


def load_dataset_from_config(config, split: str, images: Optional[bool] = None):
    """The `split` of the configured data set; `images`: whether it is of images (the run's
    `Plan.data.images`; None: looked up)."""
    data = config.data
    images = is_image_data(config) if images is None else images
    dataset = load_dataset(data.dataset, split, root=data.root or None, image_size=data.image_size if images else None,
                           download=data.download, num_points=data.num_points, seed=config.seed,
                           num_channels=data.num_channels, labels_from=data.get("labels_from", ""))
    if len(dataset) == 0:
        raise ValueError(f"the {split} split of data.dataset {data.dataset!r} is empty")
    return dataset
