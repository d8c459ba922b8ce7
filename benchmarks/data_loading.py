"""Data against the training step: what drawing a batch costs from memory (float32, the whole set
held) and from the memory-mapped uint8 cache of an image folder (`MappedImageDataset`), next to
the trainer's step on configs/vp_fashion_mnist.py's network.

Fashion-MNIST's 60k training images at 32x32 come from the system package's files
(`apt-get install dataset-fashion-mnist`) or --root; the cache is written from them as the folder
data set would write it. One torch thread (the step's time scales with threads; the data's do
not matter at this size).

Run: python benchmarks/data_loading.py [--root DIR] [--steps 20]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sde_diffusion.app.config import build_denoiser, build_loss, build_model, build_sde  # noqa: E402
from sde_diffusion.data.datasets import BatchStream, MappedImageDataset, load_dataset  # noqa: E402
from sde_diffusion.files.image_scaling import to_model_space  # noqa: E402
from sde_diffusion.training.training_step import training_step  # noqa: E402


def seconds_per_batch(dataset, batch_size: int, repeats: int) -> float:
    stream = BatchStream(len(dataset), batch_size, seed=0)
    start = time.perf_counter()
    for _ in range(repeats):
        dataset.batch(next(stream))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.vp_fashion_mnist import get_config

    config = get_config()
    in_memory = load_dataset("fashion_mnist", "train", root=args.root, image_size=32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.npy"
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(in_memory.data.shape))
        mapped[:] = (in_memory.data * 255).round().to(torch.uint8).numpy()
        mapped.flush()
        del mapped
        cached = MappedImageDataset(np.load(path, mmap_mode="r"), in_memory.labels)
        batch = config.training.batch_size
        memory_s = seconds_per_batch(in_memory, batch, 200)
        cache_s = seconds_per_batch(cached, batch, 200)

    sde = build_sde(config)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    loss_fn, denoiser = build_loss(config, sde), build_denoiser(model, sde, config)
    generator = torch.Generator().manual_seed(0)
    stream = BatchStream(len(in_memory), batch, seed=0)

    def step():
        x = to_model_space(in_memory.batch(next(stream)), config.data.centered)
        training_step(lambda: loss_fn(denoiser, x, generator), model, optimizer, grad_clip=1.0)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    step_s = (time.perf_counter() - start) / args.steps
    print(f"# Data against the training step ({platform.machine()}, 1 torch thread, torch {torch.__version__}, "
          f"{datetime.date.today().isoformat()}; Fashion-MNIST 60k train images, 32x32, batch {batch})\n")
    print("| data from | ms per batch | share of a training step |")
    print("|---|---|---|")
    for name, seconds in (("memory (float32)", memory_s), ("memory-mapped uint8 cache", cache_s)):
        print(f"| {name} | {seconds * 1e3:.3f} | {100 * seconds / step_s:.2f}% |")
    print(f"\ntraining step (vp_fashion_mnist, {sum(p.numel() for p in model.parameters()):,} parameters): "
          f"{step_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
