"""The denoising score-matching trainer behind `main.py --mode train`.

One loop: draw a batch, augment and scale it (for a class-conditional model, also its labels,
each dropped to "no label" with probability `training.cond_drop_prob`), take an Adam step on the configured loss with
linear learning-rate warmup and gradient-norm clipping, update the EMA. Around it, resumable
state: the preemption checkpoint every `snapshot_freq_for_preemption` steps holds model, EMA,
optimizer, step, data order and every RNG state, so `--mode train` on an existing workdir
continues where the run stopped; kept checkpoints and snapshot samples every `snapshot_freq`.
Scalars go to metrics.jsonl and, when the tensorboard package is installed, to TensorBoard.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoints
from .config import build_loss, build_model, build_score_fn, build_sde, is_image_data, select_device
from .datasets import BatchStream, random_flip, to_model_space, uniform_dequantize
from .ema import EMA
from .guidance import drop_labels
from .modes import draw_samples, load_dataset_from_config, sample_score_and_labels, save_sample_pictures


class _Scalars:
    """metrics.jsonl plus TensorBoard (optional dependency)."""

    def __init__(self, workdir: Path):
        self.file = open(workdir / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, step: int, **scalars) -> None:
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


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


def train(config, workdir) -> dict:
    """Train (or resume) in `workdir`; returns {"step", "loss"} of the last step."""
    workdir = Path(workdir)
    device = select_device(config)
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
    score_fn = build_score_fn(model, sde, config)
    training = config.training
    stream = BatchStream(len(train_set), training.batch_size, seed=config.seed)
    generator = torch.Generator(device).manual_seed(config.seed)

    step = 0
    resumed = checkpoints.latest_checkpoint(workdir, device)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
        optimizer.load_state_dict(resumed["optimizer"])
        stream.load_state_dict(resumed["data_stream"])
        _restore_rng(resumed["rng"], generator)
        step = int(resumed["step"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2))

    def state_at(current_step: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": current_step, "data_stream": stream.state_dict(), "rng": _rng_state(generator),
                "config": config.to_json()}

    num_classes = config.model.get("num_classes", 0)
    eval_generator = torch.Generator(device)
    eval_batch = test_set.data[:training.batch_size].to(device)
    # The eval loss of a conditional model is the conditional one (labels never dropped).
    eval_labels = test_set.labels[:training.batch_size].to(device) if num_classes else None
    scalars = _Scalars(workdir)
    progress = tqdm(total=training.n_iters, initial=step, desc="train", dynamic_ncols=True,
                    disable=None, mininterval=1.0)
    loss = torch.tensor(float("nan"))
    tick, tick_step = time.perf_counter(), step
    model.train()
    while step < training.n_iters:
        indices = next(stream)
        x = _prepare_batch(train_set.data[indices].to(device), config, generator)
        class_labels = None
        if num_classes:
            class_labels = drop_labels(train_set.labels[indices].to(device), training.cond_drop_prob,
                                       null_label=num_classes, generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = optim.lr * min((step + 1) / optim.warmup, 1.0) if optim.warmup else optim.lr
        loss = loss_fn(score_fn, x, generator, class_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        ema.update(model)
        step += 1
        progress.update(1)

        if step % training.log_freq == 0 or step == training.n_iters:
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)
            tick, tick_step = now, step
            value = loss.item()
            progress.set_postfix(loss=f"{value:.4f}", steps_per_s=f"{rate:.1f}")
            scalars.write(step, loss=value, lr=optimizer.param_groups[0]["lr"], steps_per_s=rate)
        if step % training.eval_freq == 0:
            model.eval()
            with torch.no_grad():
                eval_generator.manual_seed(config.seed + 1)  # the same noise each time: comparable
                eval_loss = loss_fn(score_fn, _prepare_batch(eval_batch, config, eval_generator),
                                    eval_generator, eval_labels)
            model.train()
            scalars.write(step, eval_loss=eval_loss.item())
        if step % training.snapshot_freq_for_preemption == 0 or step == training.n_iters:
            checkpoints.save_checkpoint(checkpoints.preemption_path(workdir), state_at(step))
        if step % training.snapshot_freq == 0 or step == training.n_iters:
            checkpoints.save_checkpoint(checkpoints.snapshot_path(workdir, step), state_at(step))
            if training.snapshot_sampling:
                _snapshot_samples(ema.averaged_model(model), sde, config, workdir, step, test_set, device)
    progress.close()
    scalars.close()
    return {"step": step, "loss": float(loss.detach())}


def _snapshot_samples(averaged_model, sde, config, workdir: Path, step: int, test_set, device) -> None:
    generator = torch.Generator(device).manual_seed(config.seed)
    count = config.training.num_snapshot_samples
    score_fn, class_labels = sample_score_and_labels(averaged_model, sde, config, count)
    with torch.no_grad():
        samples, nfe = draw_samples(score_fn, sde, config, count, generator, device, class_labels)
    data = None if is_image_data(config) else test_set.data
    save_sample_pictures(samples, workdir / "snapshots" / f"samples_{step}.png", config, data=data,
                         title=f"step {step}, {config.sampling.method}, NFE {nfe}", class_labels=class_labels)
