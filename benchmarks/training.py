"""Training throughput: steps/s of the trainer's step for several configs on this machine.

A step is what `sde_diffusion.app.train.train` does per iteration: the configured loss
(forward + backward through the network), gradient clipping, an Adam step and the EMA update.
Data are random tensors of the config's shape (loading is not what is measured; the trainer
indexes a tensor already in memory). Each config is timed over `--steps` steps after
`--warmup` untimed ones, with torch's default thread count, and the best of `--repeats` runs
is reported. Batch sizes are overridden per row (the published CIFAR-10 configs use 128).

Run: python benchmarks/training.py [--quick] [--out benchmarks/results]
Writes training.md and training.csv.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*`

from sde_diffusion.app.config import build_denoiser, build_loss, build_model, build_sde, data_shape  # noqa: E402
from sde_diffusion.training.ema import EMA  # noqa: E402
from sde_diffusion.training.speed import grad_scaler, to_memory_format, training_network  # noqa: E402
from sde_diffusion.training.training_step import training_step  # noqa: E402

# (config module, batch size, what the row shows)
ROWS = (
    ("configs.ddpm_cifar10", 8, "DDPM U-Net, 32x32x3, the DDPM paper's network"),
    ("configs.vp_cifar10", 8, "DDPM++ (ncsnpp), 32x32x3, continuous VP"),
    ("configs.vp_digits", 64, "small DDPM U-Net, 16x16x1 digits"),
    ("configs.ve_digits", 64, "small NCSN++, 16x16x1 digits"),
    ("configs.vp_toy", 512, "MLP, 2-D toy data"),
)


def time_training_steps(config, steps: int, warmup: int, repeats: int, device: str = "cpu",
                        precision: str = "fp32", channels_last: bool = False,
                        compile: bool = False) -> tuple[float, int]:
    """Best steps/s over `repeats` runs of `steps` trainer steps, and the parameter count.
    precision / channels_last / compile are the trainer's speed options (`training.*`)."""
    torch.manual_seed(config.seed)
    sde = build_sde(config)
    model = build_model(config).to(device)
    ema = EMA(model, config.model.ema_rate)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    loss_fn = build_loss(config, sde)
    network = training_network(model, torch.device(device), precision=precision,
                               channels_last=channels_last, compile=compile)
    denoiser = build_denoiser(network, sde, config)
    scaler = grad_scaler(precision, torch.device(device))
    generator = torch.Generator(device).manual_seed(0)
    x = torch.rand((config.training.batch_size, *data_shape(config)), generator=generator, device=device) * 2 - 1
    x = to_memory_format(x, channels_last)
    model.train()

    def step() -> None:
        training_step(lambda: loss_fn(denoiser, x, generator), model, optimizer, grad_clip=config.optim.grad_clip,
                      ema=ema, scaler=scaler)

    def synchronize() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        best = max(best, steps / (time.perf_counter() - start))
    return best, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per row (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    results = []
    for module_name, batch_size, what in ROWS:
        config = importlib.import_module(module_name).get_config()
        config.training.batch_size = batch_size
        config.device = "cpu"
        big = config.data.image_size >= 32 if hasattr(config.data, "image_size") else False
        steps = args.steps or (2 if args.quick else (10 if big else 50))
        repeats = 1 if args.quick else args.repeats
        rate, params = time_training_steps(config, steps, 1 if args.quick else args.warmup, repeats)
        row = {"config": module_name.split(".")[-1], "model": config.model.name, "what": what,
               "params_M": round(params / 1e6, 3), "batch": batch_size,
               "steps_per_s": round(rate, 3), "ms_per_step": round(1000 / rate, 1),
               "samples_per_s": round(rate * batch_size, 1)}
        print(row, flush=True)
        results.append(row)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}, CPU; {datetime.date.today().isoformat()}")
    lines = [f"#### Training steps/s ({machine})", "",
             "| " + " | ".join(results[0]) + " |", "|" + "---|" * len(results[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in results]
    (out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
