"""Everything that reads an ml_collections config: validation, and turning the config into the
library's plain objects (SDE, network, score function, loss, the sampler call).

Library modules take plain arguments (a model's constructor and an SDE's `from_config` read a
config section by their own signatures); this module and the application's modes are the
readers of config fields. `validate_config` runs before anything touches the disk, so a bad value stops
the run with one line naming the field.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import losses
from ..distributed import rank_device
from ..models import get_model, model_names, score_fn_from_model
from ..performance import PRECISIONS
from ..sampling import (CORRECTORS, PREDICTORS, SAMPLERS, SCHEDULES, SamplerSpec, sampler_option_names,
                       schedule_option_names, with_settings)
from ..sampling.call import GRID_FIELDS
from ..sdes import SDES, SDE, ScoreFn

IMAGE_MODELS = ("ddpm", "ncsnpp")
MAX_IMAGE_SIZE = 1024  # pixels per side; beyond it a run cannot fit in any GPU's memory at a useful batch
IMAGE_DATASETS = ("digits", "mnist", "cifar10")  # the rest are point sets
# Data sets whose labels a class-conditional model (model.num_classes > 0) can learn; the other
# toy sets carry no classes. gmm's classes are its mixture components.
DATASET_NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "gmm": 8}


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _require(condition: bool, field: str, message: str, value) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}, got {value!r}")


def _positive_int(config, field: str) -> None:
    section, name = field.split(".")
    value = config[section].get(name)
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
             "must be a positive integer", value)


def _positive_number(config, field: str) -> None:
    section, name = field.split(".")
    value = config[section].get(name)
    _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
             and value > 0, field, "must be a positive finite number", value)


def _known(name, known, field: str) -> None:
    _require(name in known, field, f"unknown name (known: {', '.join(sorted(known))})", name)


def is_image_data(config) -> bool:
    return config.data.dataset in IMAGE_DATASETS


def validate_config(config, mode: Optional[str] = None) -> None:
    """Raise ConfigError naming the first field whose value cannot work (for `mode`, when
    given: one of main.py's modes; inpaint and colorize also read the `controllable` fields)."""
    from ..datasets import DATASETS

    _known(config.training.sde, SDES, "training.sde")
    _known(config.model.name, model_names(), "model.name")
    _known(config.sampling.method, SAMPLERS, "sampling.method")
    for field, known in (("predictor", PREDICTORS), ("corrector", CORRECTORS), ("schedule", SCHEDULES)):
        if config.sampling[field] is not None:
            _known(config.sampling[field], known, f"sampling.{field}")
    _known(config.data.dataset, DATASETS, "data.dataset")
    for field in ("training.batch_size", "training.n_iters", "training.log_freq", "training.eval_freq",
                  "training.snapshot_freq", "training.snapshot_freq_for_preemption",
                  "training.num_snapshot_samples", "sampling.steps", "sampling.num_samples",
                  "sampling.batch_size", "eval.batch_size", "eval.num_samples",
                  "eval.bpd_num_images", "model.num_scales", "training.nonfinite_max_skips"):
        _positive_int(config, field)
    for field in ("optim.lr", "model.beta_min", "model.beta_max", "model.sigma_min", "model.sigma_max",
                  "eval.bpd_rtol", "eval.bpd_atol"):
        _positive_number(config, field)
    for field in ("sampling.rtol", "sampling.atol", "sampling.rho", "sampling.power"):
        if config.sampling[field.split(".")[1]] is not None:
            _positive_number(config, field)
    if config.sampling.corrector_steps is not None:
        _positive_int(config, "sampling.corrector_steps")
    _require(0 <= config.model.ema_rate < 1, "model.ema_rate", "must lie in [0, 1)", config.model.ema_rate)
    _require(0 <= config.model.get("dropout", 0.0) < 1, "model.dropout", "must lie in [0, 1)",
             config.model.get("dropout"))
    spec = sampler_spec(config)
    # t = 0 is the data itself: the VP marginal std is 0 there and the score infinite
    _require(0 < spec.eps < 1, "sampling.eps", "must lie in (0, 1)", spec.eps)
    if spec.method == "sde_solver" and not spec.options.get("adaptive", False):
        _require(config.sampling.steps >= 2, "sampling.steps", "sde_solver needs at least 2 grid points",
                 config.sampling.steps)
    _require(config.optim.optimizer in ("Adam", "AdamW"), "optim.optimizer", "must be 'Adam' or 'AdamW'",
             config.optim.optimizer)
    _require(config.training.precision in PRECISIONS, "training.precision",
             f"must be one of {', '.join(PRECISIONS)}", config.training.precision)
    if config.training.precision == "fp16":
        _require(select_device(config).type == "cuda", "training.precision",
                 "fp16 autocast is for CUDA devices (on CPU it runs far slower than fp32); use bf16",
                 "fp16")
    _require(config.optim.warmup >= 0, "optim.warmup", "must be >= 0", config.optim.warmup)
    _positive_number(config, "optim.eps")
    _require(0 <= config.optim.beta1 < 1, "optim.beta1", "must lie in [0, 1)", config.optim.beta1)
    _require(config.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0", config.optim.weight_decay)
    _require(config.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = no clipping)",
             config.optim.grad_clip)
    _require(config.training.nonfinite in ("stop", "skip"), "training.nonfinite", "must be 'stop' or 'skip'",
             config.training.nonfinite)
    _require(isinstance(config.eval.checkpoint, int) and config.eval.checkpoint >= 0, "eval.checkpoint",
             "must be a step >= 0 (0 = the latest checkpoint)", config.eval.checkpoint)
    _validate_device(config.device)
    threads = config.get("threads", 0)
    _require(isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0, "threads",
             "must be an integer >= 0 (0 = torch's default)", threads)
    seconds = config.training.get("progress_seconds", 30.0)
    _require(isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0,
             "training.progress_seconds", "must be a number of seconds >= 0", seconds)
    _validate_study(config)
    _validate_classes(config)
    _require(config.eval.bpd_trace in ("exact", "hutchinson"), "eval.bpd_trace",
             "must be 'exact' or 'hutchinson'", config.eval.bpd_trace)
    sde_class = SDES[config.training.sde]
    if not config.training.continuous:
        _require(sde_class.has_training_chain, "training.sde", "discrete training (training.continuous=False) "
                 "needs an SDE with a training chain (DDPM's vpsde, SMLD's vesde)", config.training.sde)
    if spec.options.get("predictor") == "ancestral" and spec.method == "pc":
        _require(sde_class.has_training_chain, "sampling.predictor",
                 f"ancestral sampling needs a training chain, which {config.training.sde} has not", "ancestral")
    try:
        build_sde(config)
    except ValueError as error:
        raise ConfigError(f"config.model: the {config.training.sde} SDE refuses its parameters: {error}") from None
    if config.eval.get("reference_checkpoint"):
        _validate_reference_checkpoint(config, mode)
    if mode in ("inpaint", "colorize"):
        _validate_controllable(config, mode)
    if is_image_data(config):
        _validate_image_config(config)
        _validate_data_files(config, mode)
    else:
        _positive_int(config, "data.num_points")
        _require(config.data.num_points >= 5, "data.num_points",
                 "must be at least 5 (the test split holds data.num_points // 5 points)", config.data.num_points)
        _require(config.model.name not in IMAGE_MODELS, "model.name",
                 f"{config.model.name!r} is an image network; use 'mlp' for point data", config.model.name)
    if config.model.name == "mlp":
        for field in ("model.width", "model.num_blocks", "model.embed_dim"):
            _positive_int(config, field)


def _validate_device(device) -> None:
    try:
        parsed = torch.device(device) if device != "auto" else None
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"config.device: must be 'auto' or a torch device such as 'cpu' or 'cuda:0', "
                          f"got {device!r} ({error})") from None
    _require(parsed is None or parsed.type != "cuda" or torch.cuda.is_available(), "device",
             "names a GPU but torch sees none (use 'auto' or 'cpu')", device)


def _validate_reference_checkpoint(config, mode: Optional[str]) -> None:
    path = config.eval.reference_checkpoint
    field = "eval.reference_checkpoint"
    _require(Path(path).is_file(), field, "no such file", path)
    _require(config.model.name in IMAGE_MODELS, field,
             f"score_sde_pytorch checkpoints hold {' or '.join(IMAGE_MODELS)} networks, not "
             f"model.name={config.model.name!r}", path)
    _require(not config.eval.checkpoint, field,
             "set either it or eval.checkpoint (a step of the workdir's own run), not both", path)
    _require(mode != "train", field, "is read by sample, likelihood, eval and study; training "
             "starts from a fresh network", path)
    _require(not (mode == "study" and config.study.oracle), field,
             "study.oracle=True scores the exact score, not a checkpoint", path)


def _validate_classes(config) -> None:
    """model.num_classes against the data set, and the class-conditional sampling fields."""
    from ..guidance import parse_labels

    num_classes = config.model.get("num_classes", 0)
    _require(isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0,
             "model.num_classes", "must be an integer >= 0 (0: unconditional)", num_classes)
    dataset = config.data.dataset
    if num_classes:
        expected = DATASET_NUM_CLASSES.get(dataset)
        _require(expected is not None, "model.num_classes",
                 f"data.dataset {dataset!r} has no class labels, so it must be 0", num_classes)
        _require(num_classes == expected, "model.num_classes",
                 f"must equal the {expected} classes of data.dataset {dataset!r}", num_classes)
        _require(config.model.name != "ncsnpp" or config.model.get("conditional", True), "model.conditional",
                 "must be True for a class-conditional ncsnpp (the class joins the noise embedding)",
                 config.model.get("conditional"))
    drop_prob = config.training.get("cond_drop_prob", 0.1)
    _require(isinstance(drop_prob, (int, float)) and 0 <= drop_prob < 1, "training.cond_drop_prob",
             "must lie in [0, 1)", drop_prob)
    sampling = config.sampling
    scale = sampling.get("guidance_scale", 0.0)
    _require(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 0,
             "sampling.guidance_scale", "must be a number >= 0", scale)
    labels = sampling.get("labels", "")
    if not num_classes:
        _require(scale == 0, "sampling.guidance_scale",
                 "needs a class-conditional model (model.num_classes > 0); must be 0", scale)
        _require(str(labels).strip() == "", "sampling.labels",
                 "needs a class-conditional model (model.num_classes > 0); must be empty", labels)
        return
    try:
        parse_labels(labels, num_classes)
    except ValueError as error:
        raise ConfigError(f"config.sampling.labels: {error}") from None


def _validate_study(config) -> None:
    from ..sampling import parse_spec

    _positive_int(config, "study.num_samples")
    _positive_number(config, "study.reference_tol")
    nfe = tuple(config.study.nfe)
    _require(len(nfe) > 0 and all(isinstance(n, int) and n > 0 for n in nfe), "study.nfe",
             "must be a non-empty list of positive integers", nfe)
    for text in config.study.samplers:
        try:
            parse_spec(text)
        except ValueError as error:
            raise ConfigError(f"config.study.samplers: {error}") from None


def _validate_controllable(config, mode: str) -> None:
    from ..sampling.masks import MASKS, is_mask_name
    from ..sampling.controllable import CONDITIONINGS, pc_spec

    _require(is_image_data(config), "data.dataset", f"--mode {mode} needs image data", config.data.dataset)
    if mode == "colorize":
        _require(config.data.num_channels == 3, "data.num_channels",
                 "colorize needs 3-channel (RGB) data", config.data.num_channels)
    _positive_int(config, "controllable.num_images")
    images = config.controllable.images
    _require(not images or Path(images).is_dir() or (Path(images).is_file() and Path(images).suffix == ".npz"),
             "controllable.images", "must be an existing .npz file or folder of PNGs, or '' for the test split",
             images)
    conditioning = config.controllable.conditioning
    _require(conditioning in CONDITIONINGS, "controllable.conditioning",
             f"must be one of {', '.join(CONDITIONINGS)}", conditioning)
    _positive_int(config, "controllable.particles")
    _require(config.sampling.method == "pc", "sampling.method",
             f"--mode {mode} runs the pc sampler (its predictor and corrector) with the observation", 
             config.sampling.method)
    try:
        pc_spec(sampler_spec(config), None, {}, conditioning)
    except ValueError as error:
        raise ConfigError(f"config.sampling: {error} (controllable.conditioning={conditioning})") from None
    if conditioning == "smc":
        _require(config.sampling.predictor != "none", "sampling.predictor",
                 "controllable.conditioning=smc weights particles by the predictor step; choose a predictor",
                 config.sampling.predictor)
    if mode == "inpaint":
        mask = config.controllable.mask
        _require(is_mask_name(mask) or (Path(mask).is_file() and Path(mask).suffix in (".npz", ".png")),
                 "controllable.mask", f"must name a mask ({', '.join(MASKS)}, random_pixels:p with "
                 "0 < p < 1) or be an existing .npz or .png file", mask)


# Data sets read from files the user provides (or downloads into) data.root.
FILE_DATASETS = ("mnist", "cifar10")


def _needs_data(config, mode: Optional[str]) -> bool:
    """Whether `mode` reads the data set: every mode but sample, and inpaint/colorize only when
    they take their images from the test split."""
    if mode == "sample":
        return False
    if mode in ("inpaint", "colorize"):
        return not config.controllable.images
    return mode is not None


def _validate_data_files(config, mode: Optional[str]) -> None:
    data = config.data
    if data.dataset not in FILE_DATASETS or data.root or not _needs_data(config, mode):
        return
    if data.download:
        raise ConfigError(f"config.data.root: data.download=True needs a folder to fetch {data.dataset} into: "
                          f"add --config.data.root=DIR")
    raise ConfigError(f"config.data.root: {data.dataset} is read from files: add --config.data.root=DIR "
                      f"(the folder that holds them), or --config.data.download=True with it to fetch them")


def _validate_image_config(config) -> None:
    _positive_int(config, "data.image_size")
    _positive_int(config, "data.num_channels")
    _require(config.data.image_size <= MAX_IMAGE_SIZE, "data.image_size",
             f"must be at most {MAX_IMAGE_SIZE} (the largest published score-based models' size)",
             config.data.image_size)
    _require(config.data.num_channels in (1, 3), "data.num_channels", "must be 1 (gray) or 3 (RGB)",
             config.data.num_channels)
    if config.model.name not in IMAGE_MODELS:
        return
    _positive_int(config, "model.nf")
    _positive_int(config, "model.num_res_blocks")
    ch_mult = tuple(config.model.ch_mult)
    _require(len(ch_mult) > 0 and all(isinstance(m, int) and m > 0 for m in ch_mult), "model.ch_mult",
             "must be a non-empty list of positive integers", ch_mult)
    size = config.data.image_size
    factor = 2 ** (len(ch_mult) - 1)
    _require(size % factor == 0, "data.image_size",
             f"must be divisible by 2**(len(model.ch_mult) - 1) = {factor} for this network", size)
    resolutions = {size // 2 ** level for level in range(len(ch_mult))}
    for resolution in config.model.attn_resolutions:
        _require(resolution in resolutions, "model.attn_resolutions",
                 f"each must be one of the network's resolutions {sorted(resolutions)}",
                 tuple(config.model.attn_resolutions))


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


def build_score_fn(model: torch.nn.Module, sde: SDE, config) -> ScoreFn:
    return score_fn_from_model(model, sde, continuous=config.training.continuous)


def build_loss(config, sde: SDE) -> Callable:
    """loss(score_fn, x, generator, class_labels=None, shard=None) -> scalar, the training
    objective the config names (class_labels: those of a class-conditional model's batch;
    `shard`: see losses)."""
    training = config.training
    if training.continuous:
        loss = partial(losses.dsm_loss, reduce_mean=training.reduce_mean,
                       likelihood_weighting=training.likelihood_weighting)
    elif training.sde == "vpsde":
        loss = partial(losses.ddpm_loss, reduce_mean=training.reduce_mean)
    else:
        loss = partial(losses.smld_loss, reduce_mean=training.reduce_mean)
    return lambda score_fn, x, generator, class_labels=None, shard=None: loss(
        score_fn, sde, x, generator=generator, class_labels=class_labels, shard=shard)


# sampling.* fields that describe the run (how many, in which batches, which classes), not the
# sampler call.
RUN_FIELDS = ("method", "num_samples", "batch_size", "labels", "guidance_scale")


def sampler_spec(config) -> SamplerSpec:
    """The configured sampler call, the one description that sample, eval, snapshots, inpaint
    and colorize run: `sampling.method` with the `sampling.*` fields that are set (None = the
    sampler's default). A field naming another sampler's option is ignored by design (configs
    set up pc and can still be run with another method); a schedule option that the resolved
    schedule does not take is a ConfigError naming the field."""
    sampling = config.sampling
    method = sampling.method
    own = set(sampler_option_names(method)) if method in SAMPLERS else set()
    schedule_fields = {name for schedule in SCHEDULES for name in schedule_option_names(schedule)}
    values = {name: value for name, value in sampling.items() if name not in RUN_FIELDS and value is not None
              and (name in GRID_FIELDS or name in schedule_fields or name in own)}
    spec = with_settings(SamplerSpec(method), values)
    schedule = spec.schedule or spec.traits.schedule
    for name in spec.schedule_options:
        _require(name in schedule_option_names(schedule), f"sampling.{name}",
                 f"the {schedule} schedule (sampler {method}'s grid) does not take it; unset it or set "
                 f"sampling.schedule to one that does", spec.schedule_options[name])
    try:
        return spec.resolved()
    except ValueError as error:
        raise ConfigError(f"config.sampling: {error}") from None


def data_shape(config) -> tuple:
    """Shape of one sample: (C, H, W) for images, (2,) for 2-D point sets."""
    if is_image_data(config):
        return (config.data.num_channels, config.data.image_size, config.data.image_size)
    return (config.data.dim,)
