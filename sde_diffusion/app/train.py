"""The denoising score-matching trainer behind `main.py --mode train`, in named parts: set-up
(`_set_up`) and resume (`_resume`; a start from a teacher's weights or pairs: `teacher`), the
step (`batches`, `_step`), logging (`_Log`, `scalars`), checkpoints and snapshots (`_save_due`),
signals (`_stop`), and `_train` putting them in order.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..files import checkpoints
from ..training import distributed
from ..data.datasets import BatchStream, dataset_facts
from ..training.ema import EMA
from ..training.speed import grad_scaler, training_network
from ..files.output_files import write_text_atomic
from ..training.training_step import training_step
from .batches import next_batch, prepare_batch
from .config import build_loss
from .modes import draw_samples, sampling_denoiser_and_labels, save_sample_pictures
from .plan import Plan, plan_for
from .progress import Progress, announce, say
from .scalars import NoScalars, Scalars
from .signals import StopRequest, StoppedBySignal
from .teacher import from_teacher
from .workdir_config import check_resume, data_fingerprint
from .workdir_lock import WorkdirLock


class NonFiniteError(ArithmeticError):
    """Training produced a non-finite loss or gradient and `training.nonfinite` says stop."""


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


def train(config, workdir, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    """Train (or resume) in `workdir`; returns {"step", "loss"} of the last step. Says what runs
    (naming `config_file`, when given), how it goes and how it ended (see `progress`).

    The process that writes (rank 0) holds the workdir's lock (`workdir_lock`) for the whole run
    and first removes what an interrupted checkpoint write left. SIGTERM and SIGINT end the
    current step, save the resume checkpoint and raise StoppedBySignal (`signals`); so does
    SIGHUP. `plan`: the run's (`validate_config`'s; made from `config` when not given)."""
    workdir, plan = Path(workdir), plan_for(config, plan)
    if not distributed.is_main():
        with StopRequest() as stop:
            return _train(plan, workdir, config_file, stop)
    with WorkdirLock(workdir), StopRequest() as stop:
        for path in checkpoints.remove_stale_temporaries(workdir):
            logging.getLogger(__name__).warning("removed %s, left by an interrupted checkpoint write", path)
        return _train(plan, workdir, config_file, stop)


@dataclass
class _Run:
    """What a training run holds, and its checkpoints save (`state`)."""
    plan: Plan
    model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: Any
    stream: BatchStream
    generator: torch.Generator
    train_set: Any
    test_set: Any
    data: Optional[dict]  # the train split's fingerprint, compared on resume
    step: int = 0
    skipped: int = 0

    @property
    def config(self):
        return self.plan.config

    @property
    def device(self) -> torch.device:
        return self.plan.device

    def state(self) -> dict:
        if not all(torch.isfinite(value).all() for value in self.model.state_dict().values()
                   if value.is_floating_point()):
            raise NonFiniteError(f"non-finite weights at step {self.step}; not saved, the last checkpoint is kept")
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "data_stream": self.stream.state_dict(), "rng": _rng_state(self.generator),
                "config": self.config.to_json(), "skipped_steps": self.skipped,
                "grad_scaler": self.scaler.state_dict(), **({"data": self.data} if self.data else {})}


def _set_up(plan: Plan) -> _Run:
    """Data, network, EMA, optimizer, loss scaler, data order and generator, at step 0."""
    config, device = plan.config, plan.device
    torch.manual_seed(config.seed)
    train_set = plan.dataset("train")
    model = plan.build_network().to(device)
    optim = config.optim
    optimizer_class = torch.optim.AdamW if optim.optimizer == "AdamW" else torch.optim.Adam
    optimizer = optimizer_class(model.parameters(), lr=optim.lr, betas=(optim.beta1, 0.999),
                                eps=optim.eps, weight_decay=optim.weight_decay)
    return _Run(plan, model, EMA(model, config.model.ema_rate), optimizer,
                grad_scaler(config.training.precision, device),
                BatchStream(len(train_set), config.training.batch_size, seed=config.seed),
                torch.Generator(device).manual_seed(config.seed), train_set, plan.dataset("test"),
                data_fingerprint(train_set))


def _resume(run: _Run, workdir: Path, stop: StopRequest) -> tuple:
    """Load the newest checkpoint that loads into `run`; returns (its path or None, the paths of
    those that did not load). A stop signal while reflow's pairs are made raises StoppedBySignal."""
    unreadable = []
    resumed, path = checkpoints.latest_checkpoint_and_path(workdir, run.device, unreadable=unreadable)
    from_teacher(run, workdir, resuming=resumed is not None, stop=stop)  # init_from's weights, reflow's pairs
    if resumed is None:
        return None, unreadable
    missing = [key for key in ("optimizer", "data_stream", "rng") if key not in resumed]
    if missing:
        raise checkpoints.CheckpointError(f"the checkpoint of step {resumed['step']} in {workdir} cannot "
                                          f"resume training (no {', '.join(missing)})")
    data_changed = check_resume(resumed, run.config, path, run.data)
    try:
        run.model.load_state_dict(resumed["model"])
        run.ema.load_state_dict(resumed["ema"])
        run.optimizer.load_state_dict(resumed["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise checkpoints.CheckpointError(f"checkpoint {path} does not fit this config's model: "
                                          f"{first_line}") from error
    if data_changed:  # resumed despite it: the stored position indexes the old data; next epoch
        run.stream.load_state_dict({"epoch": int(resumed["data_stream"]["epoch"]) + 1, "position": 0})
    else:
        run.stream.load_state_dict(resumed["data_stream"])
    _restore_rng(resumed["rng"], run.generator)
    if resumed.get("grad_scaler"):  # fp16's loss scale; empty when scaling is off
        run.scaler.load_state_dict(resumed["grad_scaler"])
    run.step, run.skipped = int(resumed["step"]), int(resumed.get("skipped_steps", 0))
    return path, unreadable


def _write_run_files(run: _Run, workdir: Path, unreadable: list) -> None:
    """Rank 0, before the first step: a damaged preemption checkpoint set aside, config.json, and
    classes.json for a folder whose subfolders are its classes."""
    config = run.config
    preemption = checkpoints.preemption_path(workdir)
    if preemption in unreadable:  # the next preemption save would replace it: keep the damaged file
        logging.getLogger(__name__).warning("moved the unreadable %s to %s", preemption,
                                            checkpoints.set_aside(preemption))
    write_text_atomic(workdir / "config.json", config.to_json(indent=2))
    names = dataset_facts(config.data.dataset).names_in(config.data)
    if names:  # class i is the i-th name: what sampling.labels means
        write_text_atomic(workdir / "classes.json", json.dumps(names, indent=2))
        if not config.model.get("num_classes", 0):  # a labelled folder, an unconditional model: say which
            say("the folder's %d classes are saved for eval's classifier; the model is unconditional "
                "(model.num_classes=0; set it to %d for a class-conditional one)", len(names), len(names))


def _objective(run: _Run) -> tuple:
    """(train_loss(x, class_labels), eval_loss(x, generator, class_labels)): the configured loss
    through the training view of the network (autocast, channels-last, compiled, data-parallel:
    it shares the model's parameters) and, for the eval loss, through the plain model. Under
    torchrun the loss sees this process's block of the global batch and keeps its block of the
    global batch's times and noise (`losses._own_rows`)."""
    config, training = run.config, run.config.training
    loss_fn = build_loss(config, run.plan.sde)
    network = training_network(run.model, run.device, precision=training.precision,
                               channels_last=training.channels_last, compile=training.compile)
    network = run.plan.denoiser(distributed.data_parallel(network, run.device))
    shard = (distributed.rank(), distributed.world_size()) if distributed.world_size() > 1 else None
    evaluated = run.plan.denoiser(run.model)

    def train_loss(x, class_labels, noise):  # the step: ECT's gap schedule; noise: reflow's pairs
        return loss_fn(network, x, run.generator, class_labels, step=run.step, noise=noise,
                       **({"shard": shard} if shard else {}))
    return train_loss, lambda x, generator, class_labels: loss_fn(evaluated, x, generator, class_labels,
                                                                  step=run.step)


def _step(run: _Run, train_loss, num_classes: int, skipped_in_a_row: int) -> tuple:
    """One optimizer step with the warmed-up learning rate; (loss, skipped steps in a row).
    NonFiniteError when a non-finite step is to stop the run (`training.nonfinite`)."""
    training, optim = run.config.training, run.config.optim
    x, class_labels, noise = next_batch(run, num_classes)
    for group in run.optimizer.param_groups:
        group["lr"] = optim.lr * min((run.step + 1) / optim.warmup, 1.0) if optim.warmup else optim.lr
    loss, _, applied = training_step(lambda: train_loss(x, class_labels, noise), run.model, run.optimizer,
                                     grad_clip=optim.grad_clip, ema=run.ema, scaler=run.scaler,
                                     average=distributed.mean_over_ranks)
    if applied:
        return loss, 0
    run.skipped, skipped_in_a_row = run.skipped + 1, skipped_in_a_row + 1
    if training.nonfinite == "stop" or skipped_in_a_row > training.nonfinite_max_skips:
        why = ("training.nonfinite=stop" if training.nonfinite == "stop" else
               f"{skipped_in_a_row} steps in a row, more than training.nonfinite_max_skips")
        raise NonFiniteError(f"non-finite loss or gradient at step {run.step + 1} ({why}); the "
                             f"checkpoints written so far are kept")
    return loss, skipped_in_a_row


def _save_due(run: _Run, workdir: Path, main: bool) -> None:
    """The preemption checkpoint and the kept one (with snapshot samples) when their steps come.
    Every process checks its (identical) weights in `state`, so all stop alike; rank 0 writes,
    and the barrier holds the others until the file is complete."""
    training, step = run.config.training, run.step
    last = step == training.n_iters
    if step % training.snapshot_freq_for_preemption == 0 or last:
        state = run.state()
        if main:
            checkpoints.save_checkpoint(checkpoints.preemption_path(workdir), state)
        distributed.barrier()
    if step % training.snapshot_freq == 0 or last:
        path, state = checkpoints.snapshot_path(workdir, step), run.state()
        if main:
            if path.exists():  # only a file that did not load at resume: keep it, under another name
                logging.getLogger(__name__).warning("moved the unreadable %s to %s", path, checkpoints.set_aside(path))
            checkpoints.save_checkpoint(path, state)
            if training.snapshot_sampling:
                _snapshot_samples(run.ema.averaged_model(run.model), run.plan, workdir, step, run.test_set)
        distributed.barrier()


class _Log:
    """Progress lines, the scalars (loss, lr, steps/s, skipped steps) every log_freq steps and
    the eval loss on a fixed test batch every eval_freq steps."""

    def __init__(self, run: _Run, workdir: Path, main: bool, eval_loss, num_classes: int):
        training = run.config.training
        self.run, self.main, self.eval_loss = run, main, eval_loss
        self.scalars = Scalars(workdir, run.step) if main else NoScalars()
        self.progress = Progress("train", training.n_iters, initial=run.step, every=training.log_freq,
                                 seconds=training.progress_seconds, enabled=main)
        self.tick, self.tick_step, self.seconds = time.perf_counter(), run.step, None
        self.eval_generator = torch.Generator(run.device)
        self.eval_batch = run.test_set.data[:training.batch_size].to(run.device)
        # The eval loss of a conditional model is the conditional one (labels never dropped).
        self.eval_labels = run.test_set.labels[:training.batch_size].to(run.device) if num_classes else None

    def after_step(self, loss: torch.Tensor) -> None:
        run, training, step = self.run, self.run.config.training, self.run.step
        if step % training.log_freq == 0 or step == training.n_iters:
            now = time.perf_counter()
            rate = (step - self.tick_step) / max(now - self.tick, 1e-9)
            self.tick, self.tick_step = now, step
            value = loss.item()
            self.progress.update(step, loss=value)
            self.scalars.write(step, loss=value, lr=run.optimizer.param_groups[0]["lr"], steps_per_s=rate,
                               skipped_steps=run.skipped)
        else:
            self.progress.tick(step)
        if step % training.eval_freq == 0 and self.main:
            run.model.eval()
            with torch.no_grad():
                self.eval_generator.manual_seed(run.config.seed + 1)  # the same noise each time: comparable
                batch = prepare_batch(self.eval_batch, run.plan, self.eval_generator)
                value = self.eval_loss(batch, self.eval_generator, self.eval_labels)
            run.model.train()
            self.scalars.write(step, eval_loss=value.item())

    def close(self) -> float:
        """Ends the bar and the scalar files (once); returns the run's seconds."""
        if self.seconds is None:
            self.scalars.close()
            self.seconds = self.progress.close()
        return self.seconds


def _train(plan: Plan, workdir: Path, config_file: str, stop: StopRequest) -> dict:
    config, device = plan.config, plan.device
    distributed.check_batch_divides(config.training.batch_size)
    main, training = distributed.is_main(), config.training
    run = _set_up(plan)
    resumed_path, unreadable = _resume(run, workdir, stop)
    distributed.check_same_on_all(run.step, "the step to resume from")
    if main:
        announce("train", config_file, workdir, device,
                 f"{sum(p.numel() for p in run.model.parameters()):,} parameters, " +
                 (f"resuming from step {run.step} of {resumed_path}" if resumed_path else "starting at step 0"))
    if run.step >= training.n_iters:
        if main:
            say("already trained to step %d; raise --config.training.n_iters to continue", run.step)
        return {"step": run.step, "loss": float("nan")}
    if main:
        _write_run_files(run, workdir, unreadable)
    num_classes = plan.data.num_classes
    train_loss, eval_loss = _objective(run)
    log = _Log(run, workdir, main, eval_loss, num_classes)
    loss, skipped_in_a_row = torch.tensor(float("nan")), 0
    run.model.train()
    try:
        while run.step < training.n_iters:
            loss, skipped_in_a_row = _step(run, train_loss, num_classes, skipped_in_a_row)
            run.step += 1
            log.after_step(loss)
            _save_due(run, workdir, main)
            if stop.on_any_rank(device) and run.step < training.n_iters:
                _stop(run, workdir, main, stop, log)
    finally:
        seconds = log.close()
    final_loss = float(loss.detach())
    if main:
        say("trained to step %d: loss %.4g, %s, checkpoints in %s", run.step, final_loss, _wall_time(seconds),
            workdir / checkpoints.SNAPSHOT_DIR)
    return {"step": run.step, "loss": final_loss}


def _stop(run: _Run, workdir: Path, main: bool, stop: StopRequest, log: _Log) -> None:
    """A stop signal: the resume checkpoint at this step, then StoppedBySignal."""
    state = run.state()
    if main:
        checkpoints.save_checkpoint(checkpoints.preemption_path(workdir), state)
    distributed.barrier()
    log.close()
    stopped = StoppedBySignal(stop.signum or signal.SIGTERM, run.step)
    if main:
        say("%s", stopped)
    raise stopped


def _wall_time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _snapshot_samples(averaged_model, plan: Plan, workdir: Path, step: int, test_set) -> None:
    config = plan.config
    generator = torch.Generator(plan.device).manual_seed(config.seed)
    count = config.training.num_snapshot_samples
    model, class_labels = sampling_denoiser_and_labels(averaged_model, plan, count)
    with torch.no_grad():
        samples, nfe = draw_samples(model, plan, count, generator, class_labels)
    data = None if plan.data.images else test_set.data
    save_sample_pictures(samples, workdir / "snapshots" / f"samples_{step}.png", plan, data=data,
                         title=f"step {step}, {config.sampling.method}, NFE {nfe}", class_labels=class_labels)
