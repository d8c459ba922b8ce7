"""The denoising score-matching trainer behind `main.py --mode train`.

One loop: draw a batch, augment and scale it (for a class-conditional model, also its labels,
each dropped to "no label" with probability `training.cond_drop_prob`), take an Adam step on the configured loss with
linear learning-rate warmup and gradient-norm clipping, update the EMA. Around it, resumable
state: the preemption checkpoint every `snapshot_freq_for_preemption` steps holds model, EMA,
optimizer, step, data order and every RNG state, so `--mode train` on an existing workdir
continues where the run stopped (from the newest checkpoint that loads: see `checkpoints`);
kept checkpoints and snapshot samples every `snapshot_freq`. Scalars go to metrics.jsonl and,
when the tensorboard package is installed, to TensorBoard; on resume both forget what the
interrupted run logged after the checkpoint, so each step is logged once.

A non-finite loss or gradient norm either stops the run (`training.nonfinite = "stop"`,
NonFiniteError naming the step; the checkpoints written so far are untouched) or skips that
step's optimizer and EMA update (`"skip"`, counted as `skipped_steps` in the metrics) until more
than `training.nonfinite_max_skips` steps in a row were skipped.

Under torchrun (`distributed`) `training.batch_size` is the global batch: each process draws the
same global batch, times and noise from the same seeded streams and trains on its contiguous
block, so N processes take the steps of one process with the same batch. The loss that is
logged and checked for non-finite values is the mean over the processes; rank 0 alone writes.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from functools import partial
from pathlib import Path

import torch

from .. import checkpoints, distributed
from ..datasets import BatchStream
from ..image_scaling import random_flip, to_model_space, uniform_dequantize
from ..ema import EMA
from ..guidance import drop_labels
from ..performance import grad_scaler, to_memory_format, training_network
from ..output_files import to_json, write_text_atomic
from ..training_step import training_step
from .config import build_denoiser, build_loss, build_model, build_sde, is_image_data, select_device
from .modes import draw_samples, load_dataset_from_config, sample_score_and_labels, save_sample_pictures
from .progress import Progress, announce, say
from .signals import StopRequest, StoppedBySignal
from .workdir_config import check_resume, data_fingerprint
from .workdir_lock import WorkdirLock


class NonFiniteError(ArithmeticError):
    """Training produced a non-finite loss or gradient and `training.nonfinite` says stop."""


def _forget_after(path: Path, step: int) -> None:
    """Drop the lines of metrics.jsonl past `step` (logged by a run killed after its last
    checkpoint, and about to be logged again) and a line cut short by the kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept))
    temporary.replace(path)


class _Scalars:
    """metrics.jsonl plus TensorBoard (optional dependency), continuing after `step`."""

    def __init__(self, workdir: Path, step: int):
        _forget_after(workdir / "metrics.jsonl", step)
        self.file = open(workdir / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step hides the events of the interrupted run from step + 1 on
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=step + 1 if step else None)
        except ImportError:
            self.tensorboard = None

    def write(self, step: int, **scalars) -> None:
        self.file.write(to_json({"step": step, **scalars}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


class _NoScalars:
    """What the processes other than rank 0 log: nothing."""

    def write(self, step: int, **scalars) -> None:
        pass

    def close(self) -> None:
        pass


def _prepare_batch(x: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """Augment and scale a batch of raw data into the model's space."""
    if not is_image_data(config):
        return x
    if config.data.random_flip:
        x = random_flip(x, generator)
    if config.data.uniform_dequantization:
        x = uniform_dequantize(x, generator)
    return to_model_space(x, config.data.centered)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config, workdir, config_file: str = "") -> dict:
    """Train (or resume) in `workdir`; returns {"step", "loss"} of the last step. Says what runs
    (naming `config_file`, when given), how it goes and how it ended (see `progress`).

    The process that writes (rank 0) holds the workdir's lock (`workdir_lock`) for the whole run
    and first removes what an interrupted checkpoint write left. SIGTERM and SIGINT end the
    current step, save the resume checkpoint and raise StoppedBySignal (`signals`); so does
    SIGHUP."""
    workdir = Path(workdir)
    if not distributed.is_main():
        with StopRequest() as stop:
            return _train(config, workdir, config_file, stop)
    with WorkdirLock(workdir), StopRequest() as stop:
        for path in checkpoints.remove_stale_temporaries(workdir):
            logging.getLogger(__name__).warning("removed %s, left by an interrupted checkpoint write", path)
        return _train(config, workdir, config_file, stop)


def _train(config, workdir: Path, config_file: str, stop: StopRequest) -> dict:
    device = select_device(config)
    distributed.check_batch_divides(config.training.batch_size)
    main = distributed.is_main()
    torch.manual_seed(config.seed)
    train_set = load_dataset_from_config(config, "train")
    test_set = load_dataset_from_config(config, "test")
    sde = build_sde(config)
    model = build_model(config).to(device)
    ema = EMA(model, config.model.ema_rate)
    optim = config.optim
    optimizer_class = torch.optim.AdamW if optim.optimizer == "AdamW" else torch.optim.Adam
    optimizer = optimizer_class(model.parameters(), lr=optim.lr, betas=(optim.beta1, 0.999),
                                eps=optim.eps, weight_decay=optim.weight_decay)
    loss_fn = build_loss(config, sde)
    training = config.training
    # The loss runs through a (possibly compiled / autocast) view sharing the model's parameters;
    # state dicts, EMA and evaluation use the plain model.
    network = training_network(model, device, precision=training.precision,
                               channels_last=training.channels_last, compile=training.compile)
    network = distributed.data_parallel(network, device)
    # Under torchrun the loss sees this process's block of the global batch and keeps its block
    # of the global batch's times and noise (`losses._own_rows`).
    shard = (distributed.rank(), distributed.world_size()) if distributed.world_size() > 1 else None
    train_loss_fn = partial(loss_fn, shard=shard) if shard else loss_fn
    score_fn = build_denoiser(network, sde, config)
    eval_score_fn = build_denoiser(model, sde, config)
    scaler = grad_scaler(training.precision, device)
    stream = BatchStream(len(train_set), training.batch_size, seed=config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)

    step, skipped = 0, 0
    data = data_fingerprint(train_set)  # stored with each checkpoint: data changed under a resume
    unreadable = []
    resumed, resumed_path = checkpoints.latest_checkpoint_and_path(workdir, device, unreadable=unreadable)
    if resumed is not None:
        missing = [key for key in ("optimizer", "data_stream", "rng") if key not in resumed]
        if missing:
            raise checkpoints.CheckpointError(f"the checkpoint of step {resumed['step']} in {workdir} cannot "
                                              f"resume training (no {', '.join(missing)})")
        data_changed = check_resume(resumed, config, resumed_path, data)
        try:
            model.load_state_dict(resumed["model"])
            ema.load_state_dict(resumed["ema"])
            optimizer.load_state_dict(resumed["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise checkpoints.CheckpointError(f"checkpoint {resumed_path} does not fit this config's model: "
                                              f"{first_line}") from error
        if data_changed:  # resumed despite it: the stored position indexes the old data; next epoch
            stream.load_state_dict({"epoch": int(resumed["data_stream"]["epoch"]) + 1, "position": 0})
        else:
            stream.load_state_dict(resumed["data_stream"])
        _restore_rng(resumed["rng"], generator)
        if resumed.get("grad_scaler"):  # fp16's loss scale; empty when scaling is off
            scaler.load_state_dict(resumed["grad_scaler"])
        step = int(resumed["step"])
        skipped = int(resumed.get("skipped_steps", 0))
    distributed.check_same_on_all(step, "the step to resume from")
    if main:
        announce("train", config_file, workdir, device,
                 f"{sum(p.numel() for p in model.parameters()):,} parameters, " +
                 (f"resuming from step {step} of {resumed_path}" if resumed is not None else "starting at step 0"))
    if step >= training.n_iters:
        if main:
            say("already trained to step %d; raise --config.training.n_iters to continue", step)
        return {"step": step, "loss": float("nan")}
    if main:
        preemption = checkpoints.preemption_path(workdir)
        if preemption in unreadable:  # the next preemption save would replace it: keep the damaged file
            logging.getLogger(__name__).warning("moved the unreadable %s to %s", preemption,
                                                checkpoints.set_aside(preemption))
        write_text_atomic(workdir / "config.json", config.to_json(indent=2))
        if config.data.dataset == "folder" and config.data.get("labels_from") == "subfolders":
            from ..image_folder import class_names  # class i is the i-th name: what sampling.labels means
            write_text_atomic(workdir / "classes.json", json.dumps(class_names(config.data.root), indent=2))

    def state_at(current_step: int) -> dict:
        if not all(torch.isfinite(value).all() for value in model.state_dict().values() if value.is_floating_point()):
            raise NonFiniteError(f"non-finite weights at step {current_step}; not saved, the last checkpoint is kept")
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": current_step, "data_stream": stream.state_dict(), "rng": _rng_state(generator),
                "config": config.to_json(), "skipped_steps": skipped, "grad_scaler": scaler.state_dict(),
                **({"data": data} if data else {})}

    num_classes = config.model.get("num_classes", 0)
    eval_generator = torch.Generator(device)
    eval_batch = test_set.data[:training.batch_size].to(device)
    # The eval loss of a conditional model is the conditional one (labels never dropped).
    eval_labels = test_set.labels[:training.batch_size].to(device) if num_classes else None
    scalars = _Scalars(workdir, step) if main else _NoScalars()
    progress = Progress("train", training.n_iters, initial=step, every=training.log_freq,
                        seconds=training.progress_seconds, enabled=main)
    loss = torch.tensor(float("nan"))
    tick, tick_step = time.perf_counter(), step
    skipped_in_a_row = 0
    model.train()
    while step < training.n_iters:
        indices = next(stream)
        x = _prepare_batch(train_set.batch(indices).to(device), config, generator)
        class_labels = None
        if num_classes:
            class_labels = drop_labels(train_set.labels[indices].to(device), training.cond_drop_prob,
                                       null_label=num_classes, generator=generator)
        if shard is not None:  # this process's rows of the global batch
            x = distributed.shard_rows(x)
            class_labels = None if class_labels is None else distributed.shard_rows(class_labels)
        x = to_memory_format(x, training.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = optim.lr * min((step + 1) / optim.warmup, 1.0) if optim.warmup else optim.lr
        loss, _, applied = training_step(lambda: train_loss_fn(score_fn, x, generator, class_labels), model,
                                         optimizer, grad_clip=optim.grad_clip, ema=ema, scaler=scaler,
                                         average=distributed.mean_over_ranks)
        if applied:
            skipped_in_a_row = 0
        else:
            skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
            if training.nonfinite == "stop" or skipped_in_a_row > training.nonfinite_max_skips:
                progress.close()
                scalars.close()
                why = ("training.nonfinite=stop" if training.nonfinite == "stop" else
                       f"{skipped_in_a_row} steps in a row, more than training.nonfinite_max_skips")
                raise NonFiniteError(f"non-finite loss or gradient at step {step + 1} ({why}); the "
                                     f"checkpoints written so far are kept")
        step += 1

        if step % training.log_freq == 0 or step == training.n_iters:
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)
            tick, tick_step = now, step
            value = loss.item()
            progress.update(step, loss=value)
            scalars.write(step, loss=value, lr=optimizer.param_groups[0]["lr"], steps_per_s=rate,
                          skipped_steps=skipped)
        else:
            progress.tick(step)
        if step % training.eval_freq == 0 and main:
            model.eval()
            with torch.no_grad():
                eval_generator.manual_seed(config.seed + 1)  # the same noise each time: comparable
                eval_loss = loss_fn(eval_score_fn, _prepare_batch(eval_batch, config, eval_generator),
                                    eval_generator, eval_labels)
            model.train()
            scalars.write(step, eval_loss=eval_loss.item())
        # Every process checks its (identical) weights in state_at, so all stop alike; rank 0
        # writes, and the barrier holds the others until the file is complete.
        if step % training.snapshot_freq_for_preemption == 0 or step == training.n_iters:
            state = state_at(step)
            if main:
                checkpoints.save_checkpoint(checkpoints.preemption_path(workdir), state)
            distributed.barrier()
        if step % training.snapshot_freq == 0 or step == training.n_iters:
            path, state = checkpoints.snapshot_path(workdir, step), state_at(step)
            if main:
                if path.exists():  # only a file that did not load at resume: keep it, under another name
                    logging.getLogger(__name__).warning("moved the unreadable %s to %s", path,
                                                        checkpoints.set_aside(path))
                checkpoints.save_checkpoint(path, state)
                if training.snapshot_sampling:
                    _snapshot_samples(ema.averaged_model(model), sde, config, workdir, step, test_set, device)
            distributed.barrier()
        if _any_rank_stopping(stop, device) and step < training.n_iters:
            state = state_at(step)
            if main:
                checkpoints.save_checkpoint(checkpoints.preemption_path(workdir), state)
            distributed.barrier()
            progress.close()
            scalars.close()
            stopped = StoppedBySignal(stop.signum or signal.SIGTERM, step)
            if main:
                say("%s", stopped)
            raise stopped
    seconds = progress.close()
    scalars.close()
    final_loss = float(loss.detach())
    if main:
        say("trained to step %d: loss %.4g, %s, checkpoints in %s", step, final_loss, _wall_time(seconds),
            workdir / checkpoints.SNAPSHOT_DIR)
    return {"step": step, "loss": final_loss}


def _any_rank_stopping(stop: StopRequest, device) -> bool:
    """Whether this process or (under torchrun) any other received a stop signal, so that all
    stop after the same step."""
    if not distributed.active():
        return stop.signum is not None
    flag = torch.tensor([1.0 if stop.signum is not None else 0.0], device=device)
    return bool(distributed.mean_over_ranks(flag).item() > 0)


def _wall_time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _snapshot_samples(averaged_model, sde, config, workdir: Path, step: int, test_set, device) -> None:
    generator = torch.Generator(device).manual_seed(config.seed)
    count = config.training.num_snapshot_samples
    score_fn, class_labels = sample_score_and_labels(averaged_model, sde, config, count)
    with torch.no_grad():
        samples, nfe = draw_samples(score_fn, sde, config, count, generator, device, class_labels)
    data = None if is_image_data(config) else test_set.data
    save_sample_pictures(samples, workdir / "snapshots" / f"samples_{step}.png", config, data=data,
                         title=f"step {step}, {config.sampling.method}, NFE {nfe}", class_labels=class_labels)
