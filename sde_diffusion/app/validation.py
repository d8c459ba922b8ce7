"""`validate_config`: every config field checked before anything touches the disk, so that a
bad value stops the run with one line naming the field (ConfigError); what passes becomes the
run's `Plan`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from ..models import model_names
from ..models.registry import family_members, network_facts
from ..training.speed import PRECISIONS
from ..sampling import CORRECTORS, PREDICTORS, SAMPLERS, SCHEDULES
from ..data.datasets import dataset_facts
from ..training.losses import LOSSES, loss_options
from ..processes.sdes import SDES
from .metrics import describe_fid_reference
from .config import (DIFFUSERS_MODEL, EDM_PICKLE_MODEL, PUBLISHED_MODELS, ConfigError, build_sde, is_image_data,
                     require, sampler_spec, select_device)
from .network_checks import check_image_config, check_network_builds, positive_int as _positive_int, positive_number as _positive_number
from .plan import Plan, make_plan
from .teacher import check_config as check_teacher_config


def _known(name, known, field: str) -> None:
    require(name in known, field, f"unknown name (known: {', '.join(sorted(known))})", name)


def validate_config(config, mode: Optional[str] = None) -> Plan:
    """Raise ConfigError naming the first field whose value cannot work (for `mode`, when
    given: one of main.py's modes; inpaint and colorize also read the `controllable` fields);
    else return the run's Plan, whose SDE and sampler call are those checked here."""
    from ..data.datasets import DATASETS

    _known(config.training.sde, SDES, "training.sde")
    if config.model.name == EDM_PICKLE_MODEL:
        require(str(config.eval.reference_checkpoint).endswith(".pkl") and mode != "train", "model.name",
                f"'{EDM_PICKLE_MODEL}' is a network read from an EDM pickle: set eval.reference_checkpoint to its "
                f".pkl file (sample, likelihood, eval, study)", config.model.name)
    elif config.model.name == DIFFUSERS_MODEL:
        require(Path(str(config.eval.reference_checkpoint or "")).is_dir() and mode != "train", "model.name",
                f"'{DIFFUSERS_MODEL}' is a network read from a diffusers pipeline folder: set "
                f"eval.reference_checkpoint to that folder (sample, likelihood, eval, study)", config.model.name)
    else:
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
    for field in ("sampling.rtol", "sampling.atol", "sampling.rho", "sampling.power", "sampling.snr"):
        if config.sampling[field.split(".")[1]] is not None:  # snr: the corrector squares it, so -1 would act as 1
            _positive_number(config, field)
    if config.sampling.get("max_nfe") is not None:
        _positive_int(config, "sampling.max_nfe")
    if config.eval.get("bpd_max_nfe") is not None:
        _positive_int(config, "eval.bpd_max_nfe")
    if config.sampling.corrector_steps is not None:
        _positive_int(config, "sampling.corrector_steps")
    require(0 <= config.model.ema_rate < 1, "model.ema_rate", "must lie in [0, 1)", config.model.ema_rate)
    require(0 <= config.model.get("dropout", 0.0) < 1, "model.dropout", "must lie in [0, 1)",
             config.model.get("dropout"))
    try:
        sde, sde_error = build_sde(config), None
    except (KeyError, ValueError) as error:
        sde, sde_error = None, error  # the SDE's own check below names what is wrong with it
    spec = sampler_spec(config, sde)
    # eps is a time of the process the model runs on (EDM's t is sigma, up to T = 80); where the
    # noise level is 0 (VP's t = 0) the grid would end on the data itself, with an infinite score;
    # VE's t = 0 is its sigma_min > 0, a valid end
    horizon = sde.T if sde is not None else 1.0
    end = spec.end(sde) if sde is not None else spec.eps
    if end is not None:
        zero_allowed = sde is not None and float(sde.noise_level(0.0)) > 0
        require((0 <= end if zero_allowed else 0 < end) and end < horizon, "sampling.eps",
                f"must lie in {'[' if zero_allowed else '('}0, {horizon:g}), the times of the "
                f"{config.training.sde} process", end)
    if spec.method == "sde_solver" and not spec.options.get("adaptive", False):
        require(config.sampling.steps >= 2, "sampling.steps", "sde_solver needs at least 2 grid points",
                 config.sampling.steps)
    require(config.optim.optimizer in ("Adam", "AdamW"), "optim.optimizer", "must be 'Adam' or 'AdamW'",
             config.optim.optimizer)
    require(config.training.precision in PRECISIONS, "training.precision",
             f"must be one of {', '.join(PRECISIONS)}", config.training.precision)
    if config.training.precision == "fp16":
        require(select_device(config).type == "cuda", "training.precision",
                 "fp16 autocast is for CUDA devices (on CPU it runs far slower than fp32); use bf16",
                 "fp16")
    require(config.optim.warmup >= 0, "optim.warmup", "must be >= 0", config.optim.warmup)
    _positive_number(config, "optim.eps")
    require(0 <= config.optim.beta1 < 1, "optim.beta1", "must lie in [0, 1)", config.optim.beta1)
    require(config.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0", config.optim.weight_decay)
    require(config.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = no clipping)",
             config.optim.grad_clip)
    require(config.training.nonfinite in ("stop", "skip"), "training.nonfinite", "must be 'stop' or 'skip'",
             config.training.nonfinite)
    require(isinstance(config.eval.checkpoint, int) and config.eval.checkpoint >= 0, "eval.checkpoint",
             "must be a step >= 0 (0 = the latest checkpoint)", config.eval.checkpoint)
    seeds = config.eval.get("seeds", ())
    require(isinstance(seeds, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                     for v in seeds), "eval.seeds",
            "must be a tuple of integers >= 0, e.g. (0,1,2); () = (seed,)", seeds)
    require(len(set(seeds)) == len(seeds), "eval.seeds", "must not repeat a seed (the same samples twice)", seeds)
    _validate_device(config.device)
    threads = config.get("threads", 0)
    require(isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0, "threads",
             "must be an integer >= 0 (0 = the cores other processes leave free)", threads)
    seconds = config.training.get("progress_seconds", 30.0)
    require(isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0,
             "training.progress_seconds", "must be a number of seconds >= 0", seconds)
    _validate_study(config)
    _validate_classes(config)
    loss = config.training.get("loss", "dsm")
    _known(loss, LOSSES, "training.loss")
    options = loss_options(loss)
    gamma = config.training.get("min_snr_gamma", 0.0)
    require(isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0, "training.min_snr_gamma",
            "must be a finite number >= 0 (0: off)", gamma)
    takes_gamma = [name for name in LOSSES if "min_snr_gamma" in loss_options(name)]
    require(not (gamma > 0 and ("min_snr_gamma" not in options or config.training.likelihood_weighting)),
            "training.min_snr_gamma", f"weights the {', '.join(takes_gamma)} losses without likelihood_weighting; "
            "unset one of them", gamma)
    require("likelihood_weighting" in options or not config.training.likelihood_weighting,
            "training.likelihood_weighting", f"weights the dsm loss only; the {loss!r} loss has its own weighting",
            True)
    require(config.training.get("time_sampling", "uniform") in ("uniform", "logit_normal"), "training.time_sampling",
            "must be 'uniform' or 'logit_normal'", config.training.get("time_sampling"))
    require(loss == "dsm" or config.training.continuous, "training.loss",
            f"{loss!r} is a continuous-time objective (training.continuous=True)", loss)
    from ..models.parameterization import PARAMETERIZATIONS
    parameterization = config.model.get("parameterization", "")
    require(parameterization in ("",) + PARAMETERIZATIONS, "model.parameterization",
            f"must be '' (the SDE's default) or one of {', '.join(PARAMETERIZATIONS)}", parameterization)
    discrete_labels = config.model.get("discrete_labels", "noise_level")
    require(discrete_labels in ("noise_level", "reference"), "model.discrete_labels",
             "must be 'noise_level' or 'reference'", discrete_labels)
    if discrete_labels == "reference":
        require(config.training.sde == "vpsde" and not config.training.continuous
                 and not config.model.get("num_classes", 0), "model.discrete_labels",
                 "'reference' is the reference code's conditioning of unconditional discrete DDPM "
                 "networks (training.sde=vpsde, training.continuous=False)", discrete_labels)
    require(describe_fid_reference(config.eval.get("fid_reference", "test")) is not None, "eval.fid_reference",
             "must be 'train', 'test' or 'cleanfid:NAME:SPLIT'", config.eval.get("fid_reference"))
    require(config.eval.bpd_trace in ("exact", "hutchinson"), "eval.bpd_trace",
             "must be 'exact' or 'hutchinson'", config.eval.bpd_trace)
    sde_class = SDES[config.training.sde]
    if not config.training.continuous:
        require(sde_class.has_training_chain, "training.sde", "discrete training (training.continuous=False) "
                 "needs an SDE with a training chain (DDPM's vpsde, SMLD's vesde)", config.training.sde)
    if spec.options.get("predictor") == "ancestral" and spec.method == "pc":
        require(sde_class.has_training_chain, "sampling.predictor",
                 f"ancestral sampling needs a training chain, which {config.training.sde} has not", "ancestral")
    if isinstance(sde_error, ValueError):
        raise ConfigError(f"config.model: the {config.training.sde} SDE refuses its parameters: {sde_error}")
    if sde_error is not None:
        raise sde_error
    if config.eval.get("reference_checkpoint"):
        _validate_reference_checkpoint(config, mode)
    if config.sampling.get("seeds"):
        _validate_image_seeds(config, mode)
    if mode in (None, "train"):
        check_teacher_config(config)  # training.init_from, reflow's fields
    if mode in ("inpaint", "colorize"):
        _validate_controllable(config, mode, spec)
    if is_image_data(config):
        check_image_config(config)
        check_network_builds(config)  # before the data's files are read (a folder's cache is written then)
        _validate_data_files(config, mode)
    else:
        _positive_int(config, "data.num_points")
        require(config.data.num_points >= 5, "data.num_points",
                 "must be at least 5 (the test split holds data.num_points // 5 points)", config.data.num_points)
        require(config.model.name in PUBLISHED_MODELS or not network_facts(config.model.name).images, "model.name",
                 f"{config.model.name!r} is an image network; use 'mlp' for point data", config.model.name)
        check_network_builds(config)
    return make_plan(config, sde, spec)


def _validate_device(device) -> None:
    try:
        parsed = torch.device(device) if device != "auto" else None
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"config.device: must be 'auto' or a torch device such as 'cpu' or 'cuda:0', "
                          f"got {device!r} ({error})") from None
    require(parsed is None or parsed.type != "cuda" or torch.cuda.is_available(), "device",
             "names a GPU but torch sees none (use 'auto' or 'cpu')", device)


def _validate_reference_checkpoint(config, mode: Optional[str]) -> None:
    path = config.eval.reference_checkpoint
    field = "eval.reference_checkpoint"
    if Path(path).is_dir():  # a diffusers pipeline folder: the network and its betas come from it
        require(config.model.name == DIFFUSERS_MODEL, "model.name", f"a folder ({path}) is read as a diffusers "
                f"pipeline, which needs model.name='{DIFFUSERS_MODEL}' (configs/published/diffusers_ddpm.py)",
                config.model.name)
    else:
        require(Path(path).is_file(), field, "no such file or folder", path)
    if path.endswith(".pkl"):  # EDM's network pickles: the network comes from the file
        require(config.model.name == EDM_PICKLE_MODEL, "model.name",
                f"an EDM pickle ({path}) needs model.name='{EDM_PICKLE_MODEL}' (configs/published/edm_*.py)",
                config.model.name)
        require(config.training.sde in ("edm", "vpsde", "vesde"), "training.sde",
                "EDM's networks run under edm (as EDM samples them), vpsde (VPPrecond) or vesde (the others)",
                config.training.sde)
    require(path.endswith(".pkl") or Path(path).is_dir() or network_facts(config.model.name).family == "score_sde", field,
             f"score_sde_pytorch checkpoints hold {' or '.join(family_members('score_sde'))} networks, not "
             f"model.name={config.model.name!r}", path)
    require(not config.eval.checkpoint, field,
             "set either it or eval.checkpoint (a step of the workdir's own run), not both", path)
    require(mode != "train", field, "is read by sample, likelihood, eval and study; training "
             "starts from a fresh network", path)
    require(not (mode == "study" and config.study.oracle), field,
             "study.oracle=True scores the exact score, not a checkpoint", path)


def _validate_image_seeds(config, mode: Optional[str]) -> None:
    from .image_seeds import parse_seeds

    try:
        parse_seeds(config.sampling.seeds)
    except ValueError as error:
        raise ConfigError(f"config.sampling.seeds: {error}") from None
    require(mode in (None, "sample"), "sampling.seeds", "per-image seeds are read by --mode sample (eval draws "
            "eval.num_samples for each of eval.seeds); unset it", config.sampling.seeds)


def _validate_classes(config) -> None:
    """model.num_classes against the data set, and the class-conditional sampling fields."""
    from ..training.guidance import names_in_labels, parse_labels

    num_classes = config.model.get("num_classes", 0)
    require(isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0,
             "model.num_classes", "must be an integer >= 0 (0: unconditional)", num_classes)
    dataset = config.data.dataset
    facts = dataset_facts(dataset)
    if num_classes:
        declared = facts.num_classes
        expected = facts.classes_in(config.data)  # for the user's own data: the classes its files hold
        # sampling a published network, or a workdir whose own data have moved (its weights say the classes)
        unread_folder = declared is None and (not config.data.root or not Path(config.data.root).expanduser().exists())
        require(expected is not None or unread_folder, "model.num_classes",
                 f"data.dataset {dataset!r} has no class labels, so it must be 0", num_classes)
        require(unread_folder or num_classes == expected, "model.num_classes",
                 f"must equal the {expected} classes of data.dataset {dataset!r}", num_classes)
    drop_prob = config.training.get("cond_drop_prob", 0.1)
    require(isinstance(drop_prob, (int, float)) and 0 <= drop_prob < 1, "training.cond_drop_prob",
             "must lie in [0, 1)", drop_prob)
    sampling = config.sampling
    scale = sampling.get("guidance_scale", 0.0)
    require(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 0,
             "sampling.guidance_scale", "must be a number >= 0", scale)
    labels = sampling.get("labels", "")
    if not num_classes:
        require(scale == 0, "sampling.guidance_scale",
                 "needs a class-conditional model (model.num_classes > 0); must be 0", scale)
        require(str(labels).strip() == "", "sampling.labels",
                 "needs a class-conditional model (model.num_classes > 0); must be empty", labels)
        return
    names = facts.names_in(config.data)
    if not names and facts.class_names is not None and names_in_labels(labels):
        return  # a folder's names, read from the workdir's classes.json when the mode opens it
    try:
        parse_labels(labels, num_classes, names)
    except ValueError as error:
        raise ConfigError(f"config.sampling.labels: {error}") from None


def _validate_study(config) -> None:
    from ..sampling import parse_spec

    _positive_int(config, "study.num_samples")
    _positive_number(config, "study.reference_tol")
    nfe = tuple(config.study.nfe)
    require(len(nfe) > 0 and all(isinstance(n, int) and n > 0 for n in nfe), "study.nfe",
             "must be a non-empty list of positive integers", nfe)
    for text in config.study.samplers:
        try:
            parse_spec(text)
        except ValueError as error:
            raise ConfigError(f"config.study.samplers: {error}") from None


def _validate_controllable(config, mode: str, spec) -> None:
    from ..sampling.masks import MASKS, is_mask_name
    from ..sampling.controllable import CONDITIONINGS, conditioning_spec

    require(is_image_data(config), "data.dataset", f"--mode {mode} needs image data", config.data.dataset)
    if mode == "colorize":
        require(config.data.num_channels == 3, "data.num_channels",
                 "colorize needs 3-channel (RGB) data", config.data.num_channels)
    _positive_int(config, "controllable.num_images")
    images = config.controllable.images
    require(not images or Path(images).is_dir() or (Path(images).is_file() and Path(images).suffix == ".npz"),
             "controllable.images", "must be an existing .npz file or folder of PNGs, or '' for the test split",
             images)
    conditioning = config.controllable.conditioning
    require(conditioning in CONDITIONINGS, "controllable.conditioning",
             f"must be one of {', '.join(CONDITIONINGS)}", conditioning)
    _positive_int(config, "controllable.particles")
    try:
        conditioning_spec(spec, None, {}, conditioning)
    except ValueError as error:
        raise ConfigError(f"config.sampling.method: {error} (--mode {mode}, "
                          f"controllable.conditioning={conditioning})") from None
    if conditioning == "smc":
        require(config.sampling.predictor != "none", "sampling.predictor",
                 "controllable.conditioning=smc weights particles by the predictor step; choose a predictor",
                 config.sampling.predictor)
    if mode == "inpaint":
        mask = config.controllable.mask
        require(is_mask_name(mask) or (Path(mask).is_file() and Path(mask).suffix in (".npz", ".png")),
                 "controllable.mask", f"must name a mask ({', '.join(MASKS)}, random_pixels:p with "
                 "0 < p < 1) or be an existing .npz or .png file", mask)




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
    from ..data.image_folder import LABEL_SOURCES

    labels_from = data.get("labels_from", "")
    require(labels_from in LABEL_SOURCES, "data.labels_from", "must be '' or 'subfolders'", labels_from)
    facts = dataset_facts(data.dataset)
    if facts.user_root and _needs_data(config, mode):
        folder = facts.user_root == "folder"
        path = Path(data.root).expanduser()
        require(bool(data.root) and (path.is_dir() if folder else path.is_file()), "data.root",
                f"must name the {'folder of images' if folder else '.' + data.dataset + ' file'} to read", data.root)
        if facts.check_root:  # its header, before the workdir is touched: size, layout
            facts.check_root(path, "data.root")
        return
    if not facts.download or data.root or not _needs_data(config, mode):
        return
    if facts.system_root is not None and facts.system_root.is_dir() and not data.download:
        return  # a system package's files
    if data.download:
        raise ConfigError(f"config.data.root: data.download=True needs a folder to fetch {data.dataset} into: "
                          f"add --config.data.root=DIR")
    raise ConfigError(f"config.data.root: {data.dataset} is read from files: add --config.data.root=DIR "
                      f"(the folder that holds them), or --config.data.download=True with it to fetch them")
