"""GPU speed: training images/s of the CIFAR-10 U-Nets under each speed option, where the step's
time goes, and how close the fast samplers come to the network's own forward throughput.

1. Training. For the DDPM U-Net (`configs/ddpm_cifar10.py`, 35.7M parameters) and DDPM++
   (`configs/vp_cifar10.py`, 61.8M) at 32x32, the trainer's step (`training_step`: loss forward
   and backward, clipping, Adam, EMA) on a batch already on the device, timed after warm-up
   steps that also absorb torch.compile's compilation, with each option of VARIANTS: fp32 eager
   as PyTorch runs it by default (cuDNN convolutions in TF32, matmuls in full fp32: what the
   reference implementation runs), TF32 fully off and fully on, bf16 autocast, channels_last,
   torch.compile, fused and foreach Adam, and the combinations. Each row: images/s, speed-up
   over the fp32 default, peak memory.
2. Profile of the fastest row's step (torch.profiler): the device time of its operators grouped
   as convolutions, attention, normalization, elementwise/activation, casts and copies,
   optimizer, EMA, reductions (clipping, the finiteness check) and the rest, plus the host
   syncs per step.
3. Sampling. Images/s of `dpm_solver++` and `heun` at 10 and 20 NFE, batch 256 and 1024, in fp32
   and bf16, against the same network's forward-only images/s at that batch; the overhead is
   sampler time / (NFE x forward time) - 1 (target: under 5%).
4. --loss-steps N (off by default): the loss curves of fp32 and of the fastest combination over
   the first N steps from the same initialisation and batches, mean over windows of 100 steps.

Run: python benchmarks/gpu.py [--out benchmarks/results] [--loss-steps 2000]
     python benchmarks/gpu.py --smoke   (CPU, tiny network and batch: checks that it runs)
Writes gpu.md and gpu.json. About 10 minutes on an H100-class GPU without --loss-steps.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `configs.*`

from configs import ddpm_cifar10, vp_cifar10  # noqa: E402
from sde_diffusion.app.config import build_denoiser, build_loss, build_model, build_sde, data_shape  # noqa: E402
from sde_diffusion.training.ema import EMA  # noqa: E402
from sde_diffusion.training.speed import grad_scaler, to_memory_format, training_network  # noqa: E402
from sde_diffusion.sampling import SamplerSpec, sample  # noqa: E402
from sde_diffusion.evaluation.study import markdown_table  # noqa: E402
from sde_diffusion.training.training_step import training_step  # noqa: E402

NETWORKS = {"DDPM U-Net": ddpm_cifar10, "DDPM++": vp_cifar10}
BASE = dict(tf32="default", precision="fp32", channels_last=False, compile=False, adam="default")
VARIANTS = {  # name -> options that differ from BASE (fp32 eager as PyTorch runs it by default)
    "fp32 (PyTorch default: TF32 convolutions)": {},
    "fp32, TF32 off": dict(tf32="off"),
    "fp32, TF32 on": dict(tf32="on"),
    "fp32 + fused Adam": dict(adam="fused"),
    "fp32 + foreach Adam": dict(adam="foreach"),
    "fp32 + channels_last": dict(channels_last=True),
    "fp32 + compile": dict(compile=True),
    "bf16": dict(precision="bf16"),
    "bf16 + channels_last": dict(precision="bf16", channels_last=True),
    "bf16 + compile": dict(precision="bf16", compile=True),
    "bf16 + channels_last + compile": dict(precision="bf16", channels_last=True, compile=True),
    "bf16 + channels_last + compile + fused Adam + TF32":
        dict(precision="bf16", channels_last=True, compile=True, adam="fused", tf32="on"),
    "bf16 + compile + fused Adam + TF32": dict(precision="bf16", compile=True, adam="fused", tf32="on"),
}
SMOKE_VARIANTS = ("fp32 (PyTorch default: TF32 convolutions)", "fp32 + foreach Adam", "bf16",
                  "bf16 + channels_last")
SAMPLERS, SAMPLER_NFES = ("dpm_solver++", "heun"), (10, 20)
CATEGORIES = (  # (category, substrings of CUDA kernel or aten operator names), first match wins
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit_gemm")),
    ("normalization", ("group_norm", "groupnorm", "rowwisemoments", "computefusedparams", "layer_norm")),
    ("optimizer", ("adam",)),
    ("ema", ("lerp",)),
    ("attention and matmul", ("bmm", "softmax", "attention", "einsum", "gemm", "addmm", "cutlass", "linear")),
    ("reduction (clip, checks)", ("norm", "isfinite", "reduce", "_local_scalar", "item")),
    ("casts and copies", ("copy", "cast", "contiguous", "clone", "nchwtonhwc", "nhwctonchw")),
    ("elementwise, activation", ("silu", "sigmoid", "elementwise", "vectorized", "mul", "add", "sub", "div",
                                 "pow", "sqrt", "exp", "cat", "where", "triton_poi", "multi_tensor_apply")),
)
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")


@contextlib.contextmanager
def tf32_mode(mode: str):
    """TF32 for cuDNN convolutions and cuBLAS matmuls: "default" (PyTorch's: convolutions yes,
    matmuls no), "on" or "off"."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if mode != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "on"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def shrink(config) -> None:
    """--smoke: a network small enough for a CPU test."""
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2), 1  # GroupNorm: 32 groups
    config.model.attn_resolutions = (8,)
    config.data.image_size = 16


def make_step(module, options: dict, device: torch.device, batch: int, smoke: bool):
    """(step(batch=None), model): the trainer's step under `options`, on a fixed random batch
    or the one given."""
    config = module.get_config()
    if smoke:
        shrink(config)
    torch.manual_seed(0)
    sde = build_sde(config)
    model = build_model(config).to(device)
    ema = EMA(model, config.model.ema_rate)
    adam = {"fused": dict(fused=True), "foreach": dict(foreach=True)}.get(options["adam"], {})
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, **adam)
    loss_fn = build_loss(config, sde)
    network = training_network(model, device, precision=options["precision"],
                               channels_last=options["channels_last"], compile=options["compile"])
    denoiser = build_denoiser(network, sde, config)
    scaler = grad_scaler(options["precision"], device)
    generator = torch.Generator(device).manual_seed(0)
    x = torch.rand((batch, *data_shape(config)), generator=generator, device=device) * 2 - 1
    x = to_memory_format(x, options["channels_last"])
    model.train()

    def step(batch_x=None):
        images = x if batch_x is None else to_memory_format(batch_x, options["channels_last"])
        return training_step(lambda: loss_fn(denoiser, images, generator), model, optimizer,
                             grad_clip=config.optim.grad_clip, ema=ema, scaler=scaler)
    return step, model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps / (time.perf_counter() - start)


def peak_memory_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def training_rows(device, batch: int, steps: int, warmup: int, smoke: bool) -> list:
    rows = []
    names = SMOKE_VARIANTS if smoke else VARIANTS
    for network, module in NETWORKS.items():
        baseline = None
        for name in names:
            options = {**BASE, **VARIANTS[name]}
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                with tf32_mode(options["tf32"]):
                    step, model = make_step(module, options, device, batch, smoke)
                    rate = time_steps(step, device, steps, warmup + (5 if options["compile"] else 0))
            except Exception as error:  # noqa: BLE001 (e.g. no compiler for inductor: say so, go on)
                rows.append({"network": network, "variant": name, "images/s": "-", "status": f"{error!s:.120}"})
                continue
            baseline = baseline or rate
            memory = peak_memory_gib(device)
            rows.append({"network": network, "variant": name, "params (M)": round(sum(
                p.numel() for p in model.parameters()) / 1e6, 1), "batch": batch,
                "images/s": round(rate * batch, 1), "speed-up": round(rate / baseline, 2),
                "peak memory (GiB)": round(memory, 2) if memory is not None else "-", "status": "ok"})
            print(rows[-1], flush=True)
            del step, model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def categorize(name: str) -> str:
    lowered = name.lower()
    for category, keys in CATEGORIES:
        if any(key in lowered for key in keys):
            return category
    return "other"


def profile_rows(module, options: dict, device, batch: int, steps: int, smoke: bool) -> tuple:
    """(share of the step's device time per kernel category, host syncs per step); on a CPU
    (--smoke) the CPU time of aten operators and no syncs."""
    from torch.profiler import ProfilerActivity, profile

    with tf32_mode(options["tf32"]):
        step, _ = make_step(module, options, device, batch, smoke)
        for _ in range(3 + (5 if options["compile"] else 0)):
            step()
        synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            synchronize(device)
    on_device = device.type == "cuda"
    totals, syncs = {}, -1 if on_device else 0  # one is the synchronize() that ends the profile
    for event in profiler.events():
        if on_device and event.name in SYNCS:
            syncs += 1
        # on a GPU the kernels (cuDNN's, ATen's, Triton's from compile); on a CPU the aten operators
        kernel = event.device_type == torch.autograd.DeviceType.CUDA
        if kernel if on_device else event.name.startswith("aten::"):
            spent = event.self_device_time_total if on_device else event.self_cpu_time_total
            if spent > 0:
                category = categorize(event.name)
                totals[category] = totals.get(category, 0.0) + spent
    whole = sum(totals.values()) or 1.0
    table = [{"category": name, "share of the step": f"{100 * spent / whole:.1f}%",
              "ms per step": round(spent / steps / 1000, 2)}
             for name, spent in sorted(totals.items(), key=lambda item: -item[1])]
    return table, syncs / steps


def sampler_rows(device, batches, smoke: bool, repeats: int = 2) -> list:
    """Sampler images/s against forward-only images/s at the same batch and precision."""
    rows = []
    for precision in ("fp32", "bf16"):
        config = vp_cifar10.get_config()
        if smoke:
            shrink(config)
        torch.manual_seed(0)
        sde = build_sde(config)
        model = build_model(config).to(device).eval().requires_grad_(False)
        network = training_network(model, device, precision=precision)
        denoiser = build_denoiser(network, sde, config)
        for batch in batches:
            shape = (batch, *data_shape(config))
            x = torch.randn(shape, device=device)
            t = torch.full((batch,), 0.5, device=device)
            with torch.no_grad():
                forward = time_steps(lambda: denoiser(x, t), device, repeats * 5, 2) * batch
                for method in SAMPLERS:
                    for nfe in SAMPLER_NFES:
                        steps = SamplerSpec(method).steps_for_nfe(nfe)
                        run = lambda: sample(denoiser, sde, shape, method, steps, generator=0, device=device)  # noqa: E731
                        run()
                        synchronize(device)
                        start = time.perf_counter()
                        for _ in range(repeats):
                            _, used = run()
                        synchronize(device)
                        rate = repeats * batch / (time.perf_counter() - start)
                        rows.append({"precision": precision, "batch": batch, "sampler": method, "NFE": used,
                                     "images/s": round(rate, 1), "forward-only images/s": round(forward, 1),
                                     "overhead": f"{100 * (forward / used / rate - 1):.1f}%"})
                        print(rows[-1], flush=True)
    return rows


def loss_curves(device, steps: int, options: dict, smoke: bool, window: int = 100, batch: int = 0) -> list:
    """Mean loss per window of the first `steps` steps, fp32 against `options`, same batches
    (of `batch` images; 0: 128, or 16 for --smoke)."""
    curves = {}
    batch = batch or (16 if smoke else 128)
    for label, chosen in (("fp32", BASE), ("fastest", options)):
        with tf32_mode(chosen["tf32"]):
            step, _ = make_step(ddpm_cifar10, chosen, device, batch, smoke)
            data = torch.Generator(device).manual_seed(1)
            losses = []
            for _ in range(steps):
                shape = (batch, 3, 16 if smoke else 32, 16 if smoke else 32)
                losses.append(step(torch.rand(shape, generator=data, device=device) * 2 - 1).loss)
            curves[label] = [float(torch.stack(losses[i:i + window]).mean()) for i in range(0, steps, window)]
    return [{"steps": f"{i * window + 1}-{min((i + 1) * window, steps)}", "fp32": round(a, 4),
             "fastest": round(b, 4)} for i, (a, b) in enumerate(zip(curves["fp32"], curves["fastest"]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny network and batch: a check that it runs")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per row")
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare loss curves over this many steps")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        parser.error("no GPU found: run with --smoke on a CPU")
    batch, steps, warmup = (4, 2, 1) if args.smoke else (args.batch, args.steps, 5)
    start = time.perf_counter()
    training = training_rows(device, batch, steps, warmup, args.smoke)
    fastest = max((r for r in training if r["status"] == "ok"), key=lambda r: r["images/s"])
    options = {**BASE, **VARIANTS[fastest["variant"]]}
    profile, syncs = profile_rows(NETWORKS[fastest["network"]], options, device, batch, 3 if args.smoke else 10,
                                  args.smoke)
    sampling = sampler_rows(device, (2,) if args.smoke else (256, 1024), args.smoke, 1 if args.smoke else 2)
    curves = loss_curves(device, args.loss_steps, options, args.smoke) if args.loss_steps else []
    what = (f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda"
            else f"CPU {platform.machine()} (smoke run, tiny network: not a measurement)")
    machine = (f"{what}, torch {torch.__version__}; {datetime.date.today().isoformat()}; "
               f"{time.perf_counter() - start:.0f} s in all")
    text = [f"## GPU speed ({machine})", "", "### Training", "", markdown_table(training), "",
            f"### Where the step's time goes: {fastest['network']}, {fastest['variant']} "
            f"({syncs:.1f} host syncs per step)", "", markdown_table(profile), "",
            "### Sampling against forward-only throughput", "", markdown_table(sampling), ""]
    if curves:
        text += ["### Loss curves, fp32 against the fastest combination", "", markdown_table(curves), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_smoke" if args.smoke else "gpu"
    (out / f"{name}.md").write_text("\n".join(text))
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "training": training, "profile": profile,
                                                  "host_syncs_per_step": syncs, "sampling": sampling,
                                                  "loss_curves": curves}, indent=1))
    print("\n".join(text))


if __name__ == "__main__":
    main()
