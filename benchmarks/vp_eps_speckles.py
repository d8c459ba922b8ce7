"""Why a VP noise-prediction model speckles with the data-prediction solvers (issue 29), measured
on a trained workdir (a configs/vp_fashion_mnist.py run by default):

1. the network's noise-prediction error against the noise level on held-out test images,
   E|eps_hat - eps|^2 per pixel, and what it becomes in the data prediction the solvers step
   with, x_0 = (x - sigma eps_hat) / alpha: (sigma / alpha)^2 times it;
2. samples of several samplers from the same latents: the fraction of pixels the sampler leaves
   more than 0.1 outside the data's range (before clamping), their high-frequency energy (the mean squared
   discrete Laplacian) over the test images', the samples that are speckled (an energy over 3x the
   test images'; 2 of 256 Fashion-MNIST training images exceed it too), and the FD in the data set's
   classifier features (its judge), with the floor of as many real training images;
3. where along the path the speckles start (`--probe`): deterministic DDIM, 20 steps, with its data
   prediction clamped to the data's range only at times t >= a cut, and a picture of the data
   predictions along the path of the most speckled samples.

    python benchmarks/vp_eps_speckles.py --workdir runs/fashion_vp [--step 8000] [--samples 256] [--test-images 1000] [--probe]

Prints Markdown tables (three with `--probe`); `--out DIR` also writes a sample grid per sampler
(and the probe's path picture).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sde_diffusion.app.loading import load_model  # noqa: E402
from sde_diffusion.app.metrics import data_judge  # noqa: E402
from sde_diffusion.evaluation.judges import frechet_distance  # noqa: E402
from sde_diffusion.files.plotting import save_image_grid  # noqa: E402
from sde_diffusion.processes.denoiser import Denoiser  # noqa: E402
from sde_diffusion.sampling import parse_spec, sample  # noqa: E402

# The rows of docs/benchmarks.md's table ("Speckles of noise-prediction models"): each solver
# deterministic (eta = 0) and as its SDE variants, at 10 and 20 NFE, then the many-step references.
SAMPLERS = [f"{method} steps={steps} eta={eta}" for method in ("dpm_solver++", "ddim") for steps in (10, 20)
            for eta in (0, 0.5, 1)] + [
    "dpm_solver++ order=3 unipc=True steps=20", "heun steps=10", "pc predictor=euler_maruyama corrector=none steps=50",
    "dpm_solver++ steps=100 eta=0.5", "pc predictor=euler_maruyama corrector=none steps=500"]
NOISE_LEVELS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
OVERSHOOT = 0.1  # a pixel counts as out of range beyond [-0.1, 1.1]: samples of a good model overshoot a little
SPECKLED = 3.0  # an image is speckled above this multiple of the test images' Laplacian energy
PROBE_CUTS = [0.0, 0.3, 0.6, 0.85, 2.0]  # clamp the data prediction at t >= cut (2: never)


def to_model_space(images: torch.Tensor, centered: bool) -> torch.Tensor:
    return images * 2 - 1 if centered else images


def image_energies(images: torch.Tensor) -> torch.Tensor:
    """[N] mean squared 5-point discrete Laplacian of each image in [0, 1] ([N, C, H, W])."""
    lap = (4 * images[..., 1:-1, 1:-1] - images[..., :-2, 1:-1] - images[..., 2:, 1:-1]
           - images[..., 1:-1, :-2] - images[..., 1:-1, 2:])
    return lap.square().flatten(1).mean(1)


def laplacian_energy(images: torch.Tensor) -> float:
    return float(image_energies(images).mean())


@torch.no_grad()
def probe(model, latents: torch.Tensor, test_energy: float, out: str) -> None:
    """Deterministic DDIM-20 with D clamped to the data's range only at t >= cut, per cut; then
    the data predictions along the path of the 8 most speckled unclamped samples (out/)."""
    low = 0.0 if not model.plan.data.centered else -1.0
    print("\n## Where the speckles start: DDIM, 20 steps, eta = 0, D clamped at t >= cut\n")
    print(f"| cut | speckled of {len(latents)} | Laplacian energy / test images' |\n|---|---|---|")
    for cut in PROBE_CUTS:
        def clamped(x, t, *labels, cut=cut):
            denoised = model.denoiser(x, t, *labels)
            return denoised.clamp(low, 1.0) if float(t.flatten()[0]) >= cut else denoised
        x, _ = sample(Denoiser(model.sde, clamped), model.sde, latents.shape, "ddim", steps=20, eta=0.0,
                      latents=latents)
        energies = image_energies(model.plan.to_data_space(x).clamp(0, 1)) / test_energy
        print(f"| {'never' if cut > 1 else cut} | {int((energies > SPECKLED).sum())} | {float(energies.mean()):.2f} |")
        if cut > 1:
            worst = energies.argsort(descending=True)[:8]
    path = []
    sample(model.denoiser, model.sde, (8,) + model.shape, "ddim", steps=20, eta=0.0, latents=latents[worst],
           step_hook=lambda x, t, denoised: path.append(denoised) if denoised is not None else None)
    rows = torch.stack(path[::2], 1).flatten(0, 1)  # 8 samples x every other step, T first
    if out:
        save_image_grid(model.plan.to_data_space(rows).clamp(0, 1), Path(out) / f"speckles_{model.step}_path.png",
                        nrow=len(path[::2]))


@torch.no_grad()
def noise_error_by_level(model, test: torch.Tensor, seed: int = 0) -> list:
    """[(sigma/alpha, t, E|eps_hat - eps|^2 per pixel, the x_0 error it makes)] over the test images."""
    sde, generator = model.sde, torch.Generator().manual_seed(seed)
    x0 = to_model_space(test, model.plan.data.centered)
    rows = []
    for level in NOISE_LEVELS:
        t = sde.time_of_noise_level(level)
        if not 0 < t <= sde.T:
            continue
        times = torch.full((len(x0),), t)
        mean, std = sde.marginal_prob(x0, times)
        eps = torch.randn(x0.shape, generator=generator)
        error = float((model.denoiser.noise(mean + std[:, None, None, None] * eps, times) - eps).square().mean())
        rows.append((level, t, error, error * level ** 2))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-images", type=int, default=1000, help="held-out images for the noise error")
    parser.add_argument("--samplers", nargs="*", default=SAMPLERS)
    parser.add_argument("--out", default="")
    parser.add_argument("--probe", action="store_true", help="where along the path the speckles start")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = load_model(args.workdir, step=args.step)
    test = model.plan.dataset("test").data
    train = model.plan.dataset("train").data
    print(f"## {args.workdir}, step {model.step}: the network's noise error against the noise level "
          f"({min(args.test_images, len(test))} test images)\n")
    print("| sigma/alpha | t | E|eps_hat - eps|^2 per pixel | x_0 error, (sigma/alpha)^2 times it |\n|---|---|---|---|")
    for level, t, error, x0_error in noise_error_by_level(model, test[:args.test_images], args.seed):
        print(f"| {level:g} | {t:.4f} | {error:.3e} | {x0_error:.3e} |")

    judge = data_judge(model.plan)
    reference = judge.features(test) if judge is not None else None
    count = min(args.samples, len(train))
    floor_images = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:count]]
    print(f"\n## {args.samples} samples per sampler from the same latents (seed {args.seed})\n")
    print(f"| sampler | NFE | seconds | pixels outside [{-OVERSHOOT:g}, {1 + OVERSHOOT:g}] | Laplacian energy / test images' "
          f"| speckled | classifier FD |")
    print("|---|---|---|---|---|---|---|")
    test_energy = laplacian_energy(test)
    floor_fd = frechet_distance(judge.features(floor_images), reference) if judge is not None else math.nan
    floor_energies = image_energies(floor_images) / test_energy
    print(f"| {count} real training images (the floor) | | | 0 | {float(floor_energies.mean()):.2f} "
          f"| {int((floor_energies > SPECKLED).sum())} | {floor_fd:.3f} |")
    latents = torch.randn((args.samples,) + model.shape, generator=torch.Generator().manual_seed(args.seed))
    for text in args.samplers:
        spec = parse_spec(text)
        start = time.perf_counter()
        with torch.no_grad():
            x, nfe = sample(model.denoiser, model.sde, latents.shape, spec, latents=latents,
                            generator=args.seed + 1)
        seconds = time.perf_counter() - start
        images = (x + 1) / 2 if model.plan.data.centered else x  # data space, not yet clamped
        outside = float(((images < -OVERSHOOT) | (images > 1 + OVERSHOOT)).float().mean())
        clamped = images.clamp(0, 1)
        fd = frechet_distance(judge.features(clamped), reference) if judge is not None else math.nan
        energies = image_energies(clamped) / test_energy
        print(f"| `{text}` | {nfe} | {seconds:.1f} | {outside:.4f} | {float(energies.mean()):.2f} "
              f"| {int((energies > SPECKLED).sum())} | {fd:.3f} |", flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            save_image_grid(clamped[:64], Path(args.out) / f"speckles_{model.step}_{spec.file_tag(model.sde)}.png")
    if args.probe:
        probe(model, latents[:64], test_energy, args.out)


if __name__ == "__main__":
    main()
