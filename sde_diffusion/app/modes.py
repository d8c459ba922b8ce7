"""What main.py's modes do with a trained workdir: draw samples, score likelihoods, evaluate.
Each takes the run's `Plan` (main.py's, from `validate_config`; made from the config when a
caller hands none) and builds nothing from the config again.

Shared with the trainer: `sampling_denoiser_and_labels` (the denoiser to sample with: for a
class-conditional model, guided towards `sampling.labels` with scale `sampling.guidance_scale`),
`draw_samples` (the configured sampler, in batches) and `save_sample_pictures` (an image grid,
one row per class for conditional samples, or a scatter plot against the data for 2-D sets).

Under torchrun sample, likelihood and eval divide the samples or test images over the processes
(`distributed.share_of`, each with its own seed), gather the results to rank 0 at the end, and
rank 0 alone writes and returns the report (the others return None). study runs in one process.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..training import distributed
from ..training.guidance import guided_for_labels, labels_for_samples, parse_labels
from ..files.output_files import atomic_write, to_json, write_text_atomic, written_together
from ..files.plotting import save_image_grid, save_scatter
from ..sampling import sample
from .metrics import data_judge, fid_reference_text, quality_metric_for
from .plan import Plan, plan_for
from .progress import Progress, announce, say
from .image_seeds import parse_seeds, seeded_latents, seeds_tag
from .trained import load_trained, load_trained_run  # noqa: F401 - load_trained: callers import it from here


def sampling_denoiser_and_labels(model, plan: Plan, num_samples: int, workdir=None):
    """(the network's Denoiser, None) for an unconditional network; for a class-conditional one
    (class labels -> guided Denoiser, labels [num_samples]) from `sampling.labels` (indices, or
    the class names of `class_names`) and `sampling.guidance_scale`, the form `draw_samples` takes."""
    num_classes, sampling = plan.data.num_classes, plan.config.sampling
    if not num_classes:
        return plan.denoiser(model), None
    denoiser_for = guided_for_labels(plan.denoiser(model), num_classes, float(sampling.guidance_scale))
    labels = parse_labels(sampling.labels, num_classes, class_names(plan, workdir))
    return denoiser_for, labels_for_samples(labels, num_samples)


def class_names(plan: Plan, workdir=None):
    """The names of the classes, class i first: the workdir's classes.json (what its training run
    read), else the data's own (a folder's class subfolders); None where there are none."""
    stored = Path(workdir) / "classes.json" if workdir is not None else None
    if stored is not None and stored.is_file():
        return json.loads(stored.read_text())
    from ..data.datasets import dataset_facts

    return dataset_facts(plan.data.name).names_in(plan.config.data)


def draw_samples(model, plan: Plan, num_samples: int, generator: torch.Generator, class_labels=None,
                 progress: Progress = None, latents=None, model_space: bool = False):
    """`num_samples` samples in data space with the run's sampler call on the plan's device;
    returns (x, nfe per batch). With `class_labels` ([num_samples]), `model` maps a batch's labels
    to its Denoiser (see `sampling_denoiser_and_labels`). `progress`, if given, is told the
    samples done per batch. `latents`: unit latents [num_samples, ...] to start from (per-image
    seeds) instead of prior draws; `model_space`: the samples as the sampler returns them,
    unclamped, not in data space."""
    batch_size = plan.config.sampling.batch_size
    batches, nfe = [], 0
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        batch_model = model if class_labels is None else model(class_labels[start:start + count])
        x, nfe = sample(batch_model, plan.sde, (count,) + plan.data.shape, plan.spec, generator=generator,
                        device=plan.device, latents=None if latents is None else latents[start:start + count])
        batches.append((x if model_space else plan.to_data_space(x)).cpu())
        if progress is not None:
            progress.update(start + count, nfe=nfe)
    return torch.cat(batches), nfe


def draw_shared_samples(model, plan: Plan, num_samples: int, class_labels=None, seed=None, latents=None,
                        model_space: bool = False):
    """`draw_samples` with the samples (and their `class_labels`) divided over the processes:
    (all samples in rank order, the largest NFE of a batch) on rank 0, (None, None) on the
    others. One process draws them all with the generator seeded by `seed` (`config.seed`)."""
    config, (first, count) = plan.config, distributed.share_of(num_samples)
    generator = torch.Generator(plan.device).manual_seed(distributed.rank_seed(config.seed if seed is None else seed))
    own_labels = None if class_labels is None else class_labels[first:first + count]
    progress = Progress("sampling", count, unit="sample", seconds=config.training.progress_seconds,
                        enabled=distributed.is_main())
    with torch.no_grad():
        if count:
            own_latents = None if latents is None else latents[first:first + count]
            samples, nfe = draw_samples(model, plan, count, generator, own_labels, progress, own_latents, model_space)
        else:  # more processes than samples
            samples, nfe = torch.empty((0,) + plan.data.shape), 0
    progress.close()
    gathered = distributed.gather_to_main((samples, nfe))
    if gathered is None:
        return None, None
    return torch.cat([part for part, _ in gathered]), max(part_nfe for _, part_nfe in gathered)


def save_sample_pictures(samples: torch.Tensor, path, plan: Plan, data=None, title: str = "",
                         class_labels=None) -> None:
    if plan.data.images:
        # Labels come in runs (`labels_for_samples`): as many columns as a run, one row per class.
        nrow = None if class_labels is None else int((class_labels == class_labels[0]).sum())
        save_image_grid(samples[:256], path, nrow=nrow)
    else:
        save_scatter(samples, path, data=data, title=title)


def require_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """`values`, or ValueError when any is NaN or infinite: a diverged sampler or model writes
    nothing rather than a result that looks like one."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{what}: {bad} of {values.numel()} values are NaN or infinite (a diverged sampler "
                         f"or model); nothing was written")
    return values


def _sampling_run(what: str, plan: Plan, workdir, num_samples: int, config_file: str, seeds=(None,), image_seeds=(),
                  model_space: bool = False):
    """The start `sample` and `eval` share: load the trained model, say what runs, draw
    `num_samples` (divided over the processes) for each of `seeds` (None: config.seed), or one
    image per seed of `image_seeds` (`image_seeds`: latents, and classes unless sampling.labels
    names them, drawn from each image's seed). Returns (the plan as the network narrows it, step,
    class labels or None, [samples per seed], NFE, seconds); the samples are None on the
    processes other than rank 0."""
    model, plan, step = load_trained_run(plan.config, workdir, plan.device, plan)
    if distributed.is_main():
        announce(what, config_file, workdir, plan.device,
                 f"checkpoint step {step}, {num_samples} samples with {plan.spec.summary()}"
                 + (f", seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""))
    model, class_labels = sampling_denoiser_and_labels(model, plan, num_samples, workdir)
    latents = None
    if image_seeds:
        latents, seeded_labels = seeded_latents(image_seeds, plan.data.shape, plan.data.num_classes, plan.device)
        if class_labels is not None and str(plan.config.sampling.labels).strip() in ("", "all"):
            class_labels = seeded_labels
    start, drawn, nfe = time.perf_counter(), [], 0
    for seed in seeds:
        samples, nfe = draw_shared_samples(model, plan, num_samples, class_labels, seed=seed, latents=latents,
                                           model_space=model_space)
        if samples is not None:
            require_finite(samples, f"{what} with {plan.spec.method}")
        drawn.append(samples)
    return plan, step, class_labels, drawn, nfe, time.perf_counter() - start


def _output_name(kind: str, step, plan: Plan, class_labels, count: int, seeds) -> str:
    """'samples_6000_dpm_solver++_order3_unipc_20steps_64x_seed42': the sampler call
    (`SamplerSpec.file_tag`), for a conditional model the guidance scale and a chosen label set,
    then the number of samples, `sampling.batch_size` where it is below that number ('_500x_batch100'),
    and the seeds, so that runs of other calls, sizes, batches or seeds on the same checkpoint keep
    their own files."""
    config, name = plan.config, f"{kind}_{step}_{plan.spec.file_tag(plan.sde)}"
    if class_labels is not None:
        name += f"_w{config.sampling.guidance_scale:g}"
        labels = str(config.sampling.labels).strip()
        if labels not in ("", "all"):
            name += "_labels" + "-".join(part.strip() for part in labels.split(","))
    return f"{name}_{count}x{batch_tag(config, count)}_seed{'-'.join(str(seed) for seed in seeds)}"


def batch_tag(config, count: int) -> str:
    """'_batch100' when `count` samples are drawn in batches of `sampling.batch_size`, else '':
    the batches draw from one random stream in turn, so the batch size changes the samples
    once there is more than one batch."""
    return f"_batch{config.sampling.batch_size}" if config.sampling.batch_size < count else ""


def run_sample(config, workdir, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    plan = plan_for(config, plan)
    config = plan.config
    image_seeds = parse_seeds(config.sampling.seeds) if config.sampling.get("seeds") else []
    plan, step, class_labels, (samples,), nfe, seconds = _sampling_run(
        "sample", plan, workdir, len(image_seeds) or config.sampling.num_samples, config_file, image_seeds=image_seeds,
        model_space=True)
    if samples is None:
        return None
    model_space, samples = samples, plan.to_data_space(samples)
    folder = Path(workdir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    seed_tag = config.seed  # per-image seeds name the images; the run's seed, a stochastic sampler's noise
    if image_seeds:
        seed_tag = f"s{seeds_tag(image_seeds)}" + ("" if plan.spec.deterministic else f"_seed{config.seed}")
    name = _output_name("samples", step, plan, class_labels, len(samples), (seed_tag,))
    arrays = {"samples": samples.numpy()}
    if image_seeds:  # as the sampler returned them, unclamped: what EDM's edm_sampler returns for these seeds
        arrays["model_space"] = model_space.numpy()
    if class_labels is not None:
        arrays["labels"] = class_labels.numpy()
    data = None if plan.data.images else plan.dataset("test").data
    with written_together():  # never a new .npz beside an old .png
        save_npz(folder / f"{name}.npz", **arrays)
        save_sample_pictures(samples, folder / f"{name}.png", plan, data=data,
                             title=f"{config.sampling.method}, step {step}, NFE {nfe}", class_labels=class_labels)
    report = {"step": step, "num_samples": len(samples), "nfe": nfe, "seconds": round(seconds, 3),
              "npz": str(folder / f"{name}.npz"), "png": str(folder / f"{name}.png")}
    if class_labels is not None:
        report["guidance_scale"] = float(config.sampling.guidance_scale)
    say("sample: %d samples in %.1f s, written to %s", len(samples), seconds, report["npz"])
    return report


def save_npz(path, **arrays) -> Path:
    """np.savez written whole or not at all (`output_files.atomic_write`)."""
    def write(temporary):
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)
    return atomic_write(path, write)


def _write_report(workdir, name: str, report: dict) -> dict:
    """Strict JSON (non-finite values as null, listed under "nonfinite"), replacing an earlier
    report of the same name only once complete."""
    path = write_text_atomic(Path(workdir) / "eval" / name, to_json(report, indent=2))
    say("wrote %s", path)
    return report


def run_likelihood(config, workdir, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    """Bits/dim of test images (nats per point for 2-D sets) through the probability-flow ODE."""
    from ..evaluation.likelihood import bits_per_dim, log_likelihood

    plan = plan_for(config, plan)
    config, device, sde, images = plan.config, plan.device, plan.sde, plan.data.images
    model, plan, step = load_trained_run(config, workdir, device, plan)
    model, sde = plan.denoiser(model), plan.sde
    evaluate = config.eval
    generator = torch.Generator(device).manual_seed(distributed.rank_seed(config.seed))
    options = dict(trace=evaluate.bpd_trace, rtol=evaluate.bpd_rtol, atol=evaluate.bpd_atol, generator=generator,
                   max_nfe=evaluate.get("bpd_max_nfe", 20_000))
    data = plan.dataset("test").data[:evaluate.bpd_num_images]
    first, count = distributed.share_of(len(data))
    data = data[first:first + count]
    if distributed.is_main():
        announce("likelihood", config_file, workdir, device,
                 f"checkpoint step {step}, {len(data)} test items, {evaluate.bpd_trace} trace")
    progress = Progress("likelihood", len(data), unit="item", seconds=config.training.progress_seconds,
                        enabled=distributed.is_main())
    values, total_nfe = [], 0
    start = time.perf_counter()
    for batch in torch.split(data, evaluate.batch_size):
        batch = batch.to(device)
        if images:
            value, nfe = bits_per_dim(model, sde, batch, centered=config.data.centered, **options)
        else:
            logp, _, nfe = log_likelihood(model, sde, batch, **options)
            value = -logp
        values.append(value.detach().cpu())
        total_nfe += nfe
        progress.update(sum(len(v) for v in values))
    progress.close()
    # gathered once the ODE solves are done: adaptive solvers take different steps per process
    gathered = distributed.gather_to_main((torch.cat(values) if values else torch.empty(0), total_nfe))
    if gathered is None:
        return None
    values = require_finite(torch.cat([part for part, _ in gathered]), "likelihood")
    unit = "bits_per_dim" if images else "nats_per_point"
    report = {"step": step, "metric": unit, "mean": values.mean().item(),
              "stderr": (values.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan"),
              "num": len(values), "trace": evaluate.bpd_trace, "rtol": evaluate.bpd_rtol, "atol": evaluate.bpd_atol,
              "nfe": sum(nfe for _, nfe in gathered)}
    if images:
        report["dequantization"] = "uniform, one draw per image (an upper bound on the discrete NLL)"
    if len(gathered) > 1:
        report["nfe_per_process"] = [nfe for _, nfe in gathered]
    report["seconds"] = round(time.perf_counter() - start, 3)
    # named by the whole call, as samples and eval reports are: another trace, tolerance or count
    # on the same checkpoint keeps its own file
    name = (f"likelihood_{step}_{evaluate.bpd_trace}_rtol{evaluate.bpd_rtol:g}_atol{evaluate.bpd_atol:g}_"
            f"{len(values)}items.json")
    return _write_report(workdir, name, report)


PAPER_FID_SAMPLES = 50_000  # what FID papers report; fewer makes an eval a labelled preview


def run_eval(config, workdir, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    """Sample quality against the test set by `evaluate.quality_metric`, for each seed of
    `eval.seeds` (default: `seed`), with the mean and standard deviation across seeds. A
    class-conditional model samples its `sampling.labels` with `sampling.guidance_scale`, and
    where the data set has a classifier judge the report adds `label_accuracy`, how often it reads
    the requested label. The report names the checkpoint (EMA weights), the sampler call and its
    NFE, the seeds and the number of samples; an image FID from fewer than 50k samples is a
    preview, so marked in the report and its file name."""
    plan = plan_for(config, plan)
    config, test = plan.config, plan.dataset("test").data
    if distributed.is_main():  # scores on rank 0 only, which gathers the samples
        metric, _ = quality_metric_for(plan, test, workdir=workdir)
    seeds = tuple(config.eval.get("seeds") or ()) or (config.seed,)
    plan, step, class_labels, drawn, nfe, seconds = _sampling_run("eval", plan, workdir, config.eval.num_samples,
                                                                  config_file, seeds=seeds)
    if drawn[0] is None:
        return None
    start = time.perf_counter() - seconds
    judge = data_judge(plan) if class_labels is not None else None  # fitted or read once, for every seed
    per_seed = []
    for seed, samples in zip(seeds, drawn):
        scores = metric(samples)
        for name, value in scores.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"eval: the metric {name} came out {value} on {len(samples)} samples (seed {seed}); "
                                 f"no report written")
        if judge is not None:
            scores["label_accuracy"] = judge.accuracy(samples, class_labels)
        per_seed.append(scores)
    report = {"step": step, "weights": "ema", "num_samples": len(drawn[0]), "sampler": plan.spec.summary(),
              "nfe": nfe, "seeds": list(seeds), "reference": f"the {config.data.dataset} test split ({len(test)} items)"}
    for name in per_seed[0]:
        values = [scores[name] for scores in per_seed]
        report[name] = float(np.mean(values))
        if len(values) > 1:
            report[f"{name}_std"] = float(np.std(values, ddof=1))
            report[f"{name}_per_seed"] = values
    preview = plan.data.images and "fid" in per_seed[0] and len(drawn[0]) < PAPER_FID_SAMPLES
    if "fid" in per_seed[0] and plan.data.judge != "digits":
        report["fid_reference"] = fid_reference_text(config, workdir)
    if preview:
        report["preview"] = f"FID of {len(drawn[0])} samples, not the {PAPER_FID_SAMPLES} papers report"
    if class_labels is not None:
        report["guidance_scale"] = float(config.sampling.guidance_scale)
    report["seconds"] = round(time.perf_counter() - start, 3)
    name = _output_name("eval", step, plan, class_labels, len(drawn[0]), seeds)
    return _write_report(workdir, f"{name}{'_preview' if preview else ''}.json", report)


def _study_name(step, config) -> str:
    """'study_4000_1000samples_3f2a9c1e': a grid is too long for a file name, so its digest (specs,
    NFE, samples, seed, reference tolerance) keeps the files of other grids on the same checkpoint."""
    study = config.study
    grid = [list(study.samplers), list(study.nfe), study.num_samples, config.seed, study.reference_tol]
    grid += [] if study.get("reference", True) else ["no reference"]
    return f"study_{step}_{study.num_samples}samples_{hashlib.sha256(repr(grid).encode()).hexdigest()[:8]}"


def run_study_mode(config, workdir, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    """`--mode study`: the grid `study.samplers` x `study.nfe` (`sde_diffusion.evaluation.study`) on the
    trained checkpoint, or on the exact score when `study.oracle` (data sets that declare an oracle: gmm),
    scored by `evaluate.quality_metric`. Writes study/<_study_name>.{csv,md,png}."""
    from ..evaluation.study import run_study, write_study
    from ..data.datasets import DATASETS, dataset_facts

    if distributed.world_size() > 1:
        raise ValueError("--mode study runs in one process: start it without torchrun")
    plan = plan_for(config, plan)
    config, device, sde = plan.config, plan.device, plan.sde
    study, test = config.study, plan.dataset("test").data
    if study.oracle:
        oracle = dataset_facts(config.data.dataset).oracle
        if oracle is None:
            known = ", ".join(name for name in DATASETS if dataset_facts(name).oracle)
            raise ValueError(f"study.oracle needs a data set whose exact score is known ({known}), "
                             f"not data.dataset={config.data.dataset}")
        step, mixture = "oracle", oracle()
        model = mixture.score_fn(sde)
    else:
        model, plan, step = load_trained_run(config, workdir, device, plan)
        model, mixture, sde = plan.denoiser(model), None, plan.sde
    data_metric, metric_key = quality_metric_for(plan, test, mixture, workdir=workdir)
    announce("study", config_file, workdir, device,
             f"{'the exact score' if study.oracle else f'checkpoint step {step}'}, "
             f"{len(study.samplers)} samplers x NFE {tuple(study.nfe)}, {study.num_samples} samples each")
    rows = run_study(model, sde, (study.num_samples,) + plan.data.shape, list(study.samplers),
                     list(study.nfe), lambda x: data_metric(plan.to_data_space(x)), seed=config.seed,
                     reference_ode=study.get("reference", True), reference_tol=study.reference_tol, device=device)
    title = f"{Path(workdir).name}: {config.training.sde}, step {step}, {study.num_samples} samples"
    paths = write_study(rows, Path(workdir) / "study", metric_key, title, name=_study_name(step, config))
    say("study: %d rows, written to %s", len(rows), Path(workdir) / "study")
    return {"step": step, "rows": len(rows), **paths}
