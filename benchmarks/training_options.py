"""Training steps/s of the DDPM U-Net at 32x32 with the trainer's speed options on and off.

The options are the config fields `training.precision` (fp32, bf16, fp16 autocast),
`training.channels_last` and `training.compile` (see `sde_diffusion.training.speed`). Each row times
the trainer's step (loss forward + backward, clipping, Adam, EMA; `training.time_training_steps`)
on random 32x32x3 batches of `configs/ddpm_cifar10.py`'s network (35.7M parameters) after warmup
steps that also absorb torch.compile's compilation, best of `--repeats` runs.

Run: python benchmarks/training_options.py [--device cuda] [--batch 128] [--out benchmarks/results]
Writes training_options_<device>.md and .csv.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*`
sys.path.insert(0, str(Path(__file__).resolve().parent))      # for `training`

from configs import ddpm_cifar10  # noqa: E402
from training import time_training_steps  # noqa: E402

# (precision, channels_last, compile)
VARIANTS = (
    ("fp32", False, False),
    ("fp32", True, False),
    ("bf16", False, False),
    ("bf16", True, False),
    ("fp16", True, False),
    ("fp32", False, True),
    ("bf16", True, True),
)


def machine_line(device: str) -> str:
    if device == "cuda":
        what = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    else:
        what = f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{what}, torch {torch.__version__}; {datetime.date.today().isoformat()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on cuda, 8 on cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    on_gpu = args.device.startswith("cuda")
    batch = args.batch or (128 if on_gpu else 8)
    steps = args.steps or (20 if on_gpu else 5)
    results = []
    for precision, channels_last, compile in VARIANTS:
        if compile and args.skip_compile:
            continue
        if precision == "fp16" and not on_gpu:  # the trainer refuses it: far slower than fp32 on CPU
            continue
        config = ddpm_cifar10.get_config()
        config.training.batch_size = batch
        warmup = args.warmup if args.warmup is not None else (5 if compile else 2)
        try:
            rate, params = time_training_steps(config, steps, warmup, args.repeats, args.device,
                                               precision, channels_last, compile)
        except Exception as error:  # e.g. no C++ compiler for inductor: report, keep going
            print(f"{precision} channels_last={channels_last} compile={compile}: failed: {error!s:.200}")
            continue
        row = {"precision": precision, "channels_last": channels_last, "compile": compile,
               "batch": batch, "steps_per_s": round(rate, 3), "ms_per_step": round(1000 / rate, 1),
               "images_per_s": round(rate * batch, 1)}
        if results:
            row["speedup"] = round(rate / results[0]["steps_per_s"], 2)
        else:
            row["speedup"] = 1.0
        print(row, flush=True)
        results.append(row)

    device_name = "cuda" if on_gpu else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"training_options_{device_name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    lines = [f"#### DDPM U-Net 32x32 ({params / 1e6:.1f}M parameters) training steps/s: {machine_line(device_name)}",
             "", "| " + " | ".join(results[0]) + " |", "|" + "---|" * len(results[0])]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in results]
    (out / f"training_options_{device_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
