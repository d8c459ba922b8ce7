"""`--mode inpaint` and `--mode colorize`: read images and a mask, run the configured sampler with
the observation (`sampling.controllable`, `controllable.conditioning`: replacement with any
sampler that takes a step hook, or SMC with the pc sampler and `controllable.particles` chains
per image) on the trained model, write the outputs and grids.

Images come from `controllable.images`: an .npz (key `x`, else its first array; uint8 or float
in [0, 1]; [N, H, W], [N, C, H, W] or [N, H, W, C]), a folder of PNGs, or "" for the data set's
test split. Masks (`controllable.mask`, only for inpainting) are named holes (`sampling.masks`, the part
the sampler fills in) or an .npz / .png file that is 1 (white) where pixels are kept.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..files.image_scaling import to_model_space
from ..files.image_files import read_array, to_nchw
from ..files.plotting import save_image_grid
from ..sampling.controllable import colorize, conditioning_spec, inpaint
from ..sampling.masks import make_mask
from .modes import require_finite, save_npz
from .plan import Plan, plan_for
from .progress import Progress, announce, say
from .trained import load_trained


def read_images(plan: Plan) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] from `controllable.images` (first `controllable.num_images`)."""
    config = plan.config
    source, count, size = config.controllable.images, config.controllable.num_images, config.data.image_size
    if not source:
        images = plan.dataset("test").data
    elif Path(source).is_dir():
        files = sorted(Path(source).glob("*.png"))[:count]
        if not files:
            raise ValueError(f"no .png files in {source}")
        arrays = [read_array(f, "image") for f in files]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"the PNGs in {source} differ in shape: {sorted(shapes)}")
        arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]
        images = to_nchw(np.stack(arrays), source)
    else:
        images = to_nchw(read_array(Path(source), "images"), source)
    images = images[:count]
    if tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"images in {source or 'the test split'} are {images.shape[2]}x{images.shape[3]}, "
                         f"not {size}x{size} (data.image_size)")
    return images


def _gray_if_equal_channels(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 3 and (images == images[:, :1]).all():
        return images[:, :1]
    return images


# -- the modes -----------------------------------------------------------------------------
def _inpaint_options(config, spec) -> dict:
    """`inpaint`'s keywords: the sampler call as the conditioning runs it (`_conditioned_spec`)
    and the conditioning."""
    return dict(spec=spec, conditioning=config.controllable.conditioning, particles=config.controllable.particles)


def _conditioned_spec(plan: Plan):
    """The run's sampler call as the conditioning runs it (with the options the sampler
    declares for conditioned runs, `controllable.conditioning_spec`)."""
    return conditioning_spec(plan.spec, None, {}, plan.config.controllable.conditioning)


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:8]


def _output_name(mode: str, step, plan: Plan, images: torch.Tensor, mask=None, spec=None) -> str:
    """'inpaint_4000_half_right_smc16_pc_euler_maruyama_langevin_1000steps_6x3fa0c2d1_seed0': the
    mask (a mask file's name and a digest of its pixels), the conditioning, the sampler call, the
    count and a digest of the input images, the images per batch where there is more than one
    batch, and the seed, so that another call, input set, batching or seed on the same checkpoint
    keeps its files. `spec`: the run's `_conditioned_spec`, made here when not given."""
    config = plan.config
    controllable = config.controllable
    mask_name = controllable.mask
    if mask_name.lower().endswith((".npz", ".png")):  # a mask file: its name, without folders
        mask_name = "mask-" + Path(mask_name).stem + ("" if mask is None else "-" + _digest(mask))
    parts = [mode, str(step)] + ([mask_name.replace(":", "")] if mode == "inpaint" else [])
    smc = controllable.conditioning == "smc"
    parts.append(f"smc{controllable.particles}" if smc else controllable.conditioning)
    per_batch = _images_per_batch(config)  # one random stream through the batches: their size matters
    batches = f"_batch{per_batch}" if per_batch < len(images) else ""
    spec = spec if spec is not None else _conditioned_spec(plan)
    return "_".join(parts + [spec.file_tag(plan.sde), f"{len(images)}x{_digest(images)}{batches}",
                             f"seed{config.seed}"])


def _images_per_batch(config) -> int:
    """sampling.batch_size counts the network's batch: with SMC each image brings a population
    of controllable.particles chains, so fewer images go in at once (at least one)."""
    if config.controllable.conditioning == "smc":
        return max(1, config.sampling.batch_size // config.controllable.particles)
    return config.sampling.batch_size


def run_controllable(config, workdir, mode: str, config_file: str = "", plan: Optional[Plan] = None) -> dict:
    """`mode` = "inpaint" or "colorize"; writes <mode>/<name>.npz (`_output_name`) (outputs, inputs,
    originals, mask in [0, 1]) and .png grids of the inputs, the outputs and all three."""
    plan = plan_for(config, plan)
    config, device, sde = plan.config, plan.device, plan.sde
    images = read_images(plan)
    channels = config.data.num_channels
    if mode == "inpaint":
        images = _gray_if_equal_channels(images) if channels == 1 else images
        if images.shape[1] != channels:
            raise ValueError(f"images have {images.shape[1]} channels, the model {channels} (data.num_channels)")
        mask = make_mask(config.controllable.mask, config.data.image_size, config.seed)
        inputs = torch.where(mask, images, torch.full_like(images, 0.5))  # missing pixels shown gray
    else:
        inputs = images.mean(1, keepdim=True)  # the channel mean: what `colorize` preserves
    model, _, step = load_trained(config, workdir, device, plan)
    denoiser = plan.denoiser(model)
    generator = torch.Generator(device).manual_seed(config.seed)
    spec = _conditioned_spec(plan)  # made once: the run, its start line and its file names
    options = _inpaint_options(config, spec)
    announce(mode, config_file, workdir, device, f"checkpoint step {step}, {len(images)} images, "
             f"{config.controllable.conditioning} with {spec.summary()}")
    progress = Progress(mode, len(images), unit="image", seconds=config.training.progress_seconds)
    outputs, nfe, start = [], 0, time.perf_counter()
    with torch.no_grad():
        for batch in torch.split(images, _images_per_batch(config)):
            batch = to_model_space(batch.to(device), config.data.centered)
            if mode == "inpaint":
                x, nfe = inpaint(denoiser, sde, batch, mask.to(device), generator=generator, **options)
            else:
                x, nfe = colorize(denoiser, sde, batch.mean(1, keepdim=True), generator=generator, **options)
            outputs.append(plan.to_data_space(x).cpu())
            progress.update(sum(len(output) for output in outputs))
    progress.close()
    outputs = require_finite(torch.cat(outputs), mode)
    seconds = time.perf_counter() - start

    folder = Path(workdir) / mode
    folder.mkdir(parents=True, exist_ok=True)
    name = _output_name(mode, step, plan, images, mask if mode == "inpaint" else None, spec)
    arrays = {"outputs": outputs.numpy(), "inputs": inputs.numpy(), "originals": images.numpy()}
    if mode == "inpaint":
        arrays["mask"] = mask[0].numpy()
    save_npz(folder / f"{name}.npz", **arrays)
    shown = inputs.expand(-1, outputs.shape[1], -1, -1)
    save_image_grid(shown[:256], folder / f"{name}_inputs.png")
    save_image_grid(outputs[:256], folder / f"{name}_outputs.png")
    save_comparison(shown, outputs, images.expand_as(outputs), folder / f"{name}.png")
    report = {"step": step, "num_images": len(outputs), "nfe": nfe, "seconds": round(seconds, 3),
              "conditioning": config.controllable.conditioning,
              "npz": str(folder / f"{name}.npz"), "png": str(folder / f"{name}.png")}
    say("%s: %d images in %.1f s, written to %s", mode, len(outputs), seconds, report["npz"])
    return report


def save_comparison(inputs, outputs, originals, path, per_row: int = 8, count: int = 32) -> None:
    """Rows of `per_row` inputs, their outputs and the originals, for the first `count` images."""
    blocks = []
    for start in range(0, min(count, len(outputs)), per_row):
        for images in (inputs, outputs, originals):
            chunk = images[start:start + per_row]
            padding = torch.ones((per_row - len(chunk),) + tuple(chunk.shape[1:]))
            blocks.append(torch.cat([chunk, padding]))
    save_image_grid(torch.cat(blocks), path, nrow=per_row)
