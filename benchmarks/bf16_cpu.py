"""bf16 against fp32 on a CPU: the machine's ceiling at the network's own shapes, the trainer's
step over batch sizes and thread counts, and where each step's time goes.

1. Ceiling. Every convolution and linear layer of the DDPM U-Net (`configs/ddpm_cifar10.py`,
   32x32) is run alone at its own input shape, forward and backward, in fp32 and in bf16
   (inputs and weights cast beforehand, as autocast hands them over); the sum over the network's
   layers is the time its convolutions and matmuls would take, and fp32 / bf16 is the most bf16
   can gain on this CPU for this network.
2. Steps. The trainer's step (`benchmarks/gpu.py`'s make_step: loss forward and backward,
   clipping, Adam, EMA) in fp32 and bf16 autocast at each `--batches` and `--threads`, images/s,
   best of `--repeats` runs of `--steps` steps after 2 warm-up steps.
3. Profile. CPU time per step of the aten operators by category (gpu.py's categories) for fp32
   and bf16 at the first batch size and the last thread count.
4. Loss (`--loss-steps N`, off by default): fp32's and bf16's mean loss per 100 steps over the
   first N steps from the same initialisation and batches (gpu.py's loss_curves), at the first
   batch size and the last thread count.

oneDNN runs bf16 convolutions on AMX tiles where the CPU has them (`amx_bf16` in /proc/cpuinfo);
`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` in the environment runs the same benchmark as a CPU with
AVX-512 BF16 but no AMX would.

Run on an otherwise idle machine: python benchmarks/bf16_cpu.py [--batches 4,8,16] [--threads 1,2]
[--out benchmarks/results/bf16_cpu.md]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import BASE, loss_curves, make_step, profile_rows, time_steps  # noqa: E402
from configs import ddpm_cifar10  # noqa: E402
from sde_diffusion.app.config import build_model, data_shape  # noqa: E402
from sde_diffusion.evaluation.study import markdown_table  # noqa: E402
from sde_diffusion.training.speed import cpu_runs_bf16_on_amx  # noqa: E402


def cpu_name() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def numbers(text: str) -> list:
    return [int(value) for value in text.split(",") if value.strip()]


def layer_calls(batch: int) -> list:
    """(layer, input shape) of every Conv2d and Linear call in one forward of the U-Net."""
    config = ddpm_cifar10.get_config()
    model = build_model(config)
    calls = []
    hooks = [module.register_forward_hook(lambda module, inputs, output: calls.append((module, inputs[0].shape)))
             for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(batch, *data_shape(config)), torch.full((batch,), 500.0))
    for hook in hooks:
        hook.remove()
    return calls


def layer_seconds(module: nn.Module, shape, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best time of one forward and backward (input and weight gradients) of `module` in `dtype`."""
    layer = type(module)(**layer_arguments(module)).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        layer(x).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def layer_arguments(module: nn.Module) -> dict:
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return dict(in_features=module.in_features, out_features=module.out_features, bias=bias)
    return dict(in_channels=module.in_channels, out_channels=module.out_channels, kernel_size=module.kernel_size,
                stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups, bias=bias)


def ceiling_rows(batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    totals = {"fp32": 0.0, "bf16": 0.0}
    for module, shape in layer_calls(batch):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            totals[name] += layer_seconds(module, shape, dtype)
    return {"batch": batch, "threads": threads, "fp32 conv+linear s": round(totals["fp32"], 3),
            "bf16 conv+linear s": round(totals["bf16"], 3), "ceiling fp32/bf16": round(totals["fp32"] / totals["bf16"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=numbers, default=[4, 8, 16])
    parser.add_argument("--threads", type=numbers, default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loss-steps", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bf16_cpu.md"))
    args = parser.parse_args()
    device = torch.device("cpu")
    amx = {True: "with AMX", False: "without AMX (or oneDNN kept below it)", None: "AMX unknown"}[cpu_runs_bf16_on_amx()]
    lines = [f"CPU {cpu_name()} {amx}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {datetime.date.today().isoformat()}; DDPM U-Net 32x32 (configs/ddpm_cifar10.py)", ""]

    ceilings = [ceiling_rows(batch, threads) for threads in args.threads for batch in args.batches]
    lines += ["### Ceiling: the network's convolutions and linear layers alone, forward + backward", "",
              markdown_table(ceilings)]
    print("\n".join(lines), flush=True)

    steps = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            rates = {}
            for precision in ("fp32", "bf16"):
                step, _ = make_step(ddpm_cifar10, {**BASE, "precision": precision}, device, batch, smoke=False)
                for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
                    step()
                rates[precision] = max(time_steps(step, device, args.steps, 0) for _ in range(args.repeats)) * batch
            steps.append({"batch": batch, "threads": threads, "fp32 images/s": round(rates["fp32"], 2),
                          "bf16 images/s": round(rates["bf16"], 2), "bf16 / fp32": round(rates["bf16"] / rates["fp32"], 2)})
            print(steps[-1], flush=True)
    lines += ["", "### The trainer's step", "", markdown_table(steps)]

    torch.set_num_threads(args.threads[-1])
    profiles = {precision: dict((row["category"], row["ms per step"]) for row in profile_rows(
        ddpm_cifar10, {**BASE, "precision": precision}, device, args.batches[0], 2, smoke=False)[0])
        for precision in ("fp32", "bf16")}
    categories = sorted(set(profiles["fp32"]) | set(profiles["bf16"]), key=lambda c: -profiles["fp32"].get(c, 0))
    lines += ["", f"### CPU time per step by operator category, batch {args.batches[0]}, {args.threads[-1]} threads",
              "", markdown_table([{"category": c, "fp32 ms": profiles["fp32"].get(c, 0),
                                   "bf16 ms": profiles["bf16"].get(c, 0)} for c in categories])]
    if args.loss_steps:
        curves = loss_curves(device, args.loss_steps, {**BASE, "precision": "bf16"}, False, batch=args.batches[0])
        lines += ["", f"### Mean loss per 100 steps from the same start and batches, batch {args.batches[0]}", "",
                  markdown_table([{"steps": row["steps"], "fp32": row["fp32"], "bf16": row["fastest"]} for row in curves])]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
