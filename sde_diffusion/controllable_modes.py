"""`--mode inpaint` and `--mode colorize`: read images and a mask, run the controllable PC
samplers (`sampling.controllable`, `controllable.conditioning`: replacement, or SMC with
`controllable.particles` chains per image) on the trained model, write the outputs and grids.

Images come from `controllable.images`: an .npz (key `x`, else its first array; uint8 or float
in [0, 1]; [N, H, W], [N, C, H, W] or [N, H, W, C]), a folder of PNGs, or "" for the data set's
test split. Masks (`controllable.mask`, only for inpainting) are named holes (`MASKS`, the part
the sampler fills in) or an .npz / .png file that is 1 (white) where pixels are kept.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .config import build_score_fn, sampler_spec, select_device
from .datasets import to_model_space
from .modes import load_dataset_from_config, load_trained, to_data_space
from .plotting import save_image_grid
from .progress import Progress, announce, say
from .sampling.controllable import colorize, inpaint


# -- masks: True where the pixel is observed, [1, 1, H, W] ---------------------------------
def _hole(size: int, rows: slice, cols: slice) -> torch.Tensor:
    keep = torch.ones(size, size, dtype=torch.bool)
    keep[rows, cols] = False
    return keep


MASKS = {
    "half_left": lambda size, seed: _hole(size, slice(None), slice(0, size // 2)),
    "half_right": lambda size, seed: _hole(size, slice(None), slice(size // 2, None)),
    "half_top": lambda size, seed: _hole(size, slice(0, size // 2), slice(None)),
    "half_bottom": lambda size, seed: _hole(size, slice(size // 2, None), slice(None)),
    "center_square": lambda size, seed: _hole(size, slice(size // 4, size - size // 4),
                                              slice(size // 4, size - size // 4)),
}
RANDOM_PIXELS = "random_pixels:"  # random_pixels:p, each pixel missing with probability p


def is_mask_name(name: str) -> bool:
    if name.startswith(RANDOM_PIXELS):
        try:
            return 0 < float(name[len(RANDOM_PIXELS):]) < 1
        except ValueError:
            return False
    return name in MASKS


def make_mask(spec: str, size: int, seed: int) -> torch.Tensor:
    """The observed-pixel mask [1, 1, size, size] (bool) named by `spec` or read from its file."""
    if spec.startswith(RANDOM_PIXELS):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.rand(size, size, generator=generator) >= float(spec[len(RANDOM_PIXELS):])
    elif spec in MASKS:
        keep = MASKS[spec](size, seed)
    else:
        array = np.squeeze(_read_array(Path(spec), "mask"))  # [H, W], or with 3 channels
        if array.ndim == 3:
            array = array.mean(-1 if array.shape[-1] == 3 else 0)
        if array.shape != (size, size):
            raise ValueError(f"mask {spec} is {'x'.join(map(str, array.shape))}, not {size}x{size} "
                             "(data.image_size)")
        keep = torch.as_tensor(array) > 0.5
    return keep[None, None]


# -- images --------------------------------------------------------------------------------
def _read_array(path: Path, what: str) -> np.ndarray:
    """A float array in [0, 1] from an .npz or .png file (uint8 scaled by 1/255)."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if not archive.files:
                raise ValueError(f"{what} file {path} holds no array")
            array = archive["x"] if "x" in archive.files else archive[archive.files[0]]
    elif path.suffix == ".png":
        import matplotlib.image

        array = matplotlib.image.imread(path)  # float in [0, 1], [H, W] or [H, W, 3 or 4]
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
    else:
        raise ValueError(f"{what} file {path} is neither .npz nor .png")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"{what} in {path} must be uint8 or floats in [0, 1], found "
                         f"[{array.min():.3g}, {array.max():.3g}]")
    return array


def _to_nchw(array: np.ndarray, source) -> torch.Tensor:
    if array.ndim == 3:  # [N, H, W]: gray
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images in {source} must be [N, H, W], [N, C, H, W] or [N, H, W, C] with "
                         f"C = 1 or 3, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def read_images(config) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] from `controllable.images` (first `controllable.num_images`)."""
    source, count, size = config.controllable.images, config.controllable.num_images, config.data.image_size
    if not source:
        images = load_dataset_from_config(config, "test").data
    elif Path(source).is_dir():
        files = sorted(Path(source).glob("*.png"))[:count]
        if not files:
            raise ValueError(f"no .png files in {source}")
        arrays = [_read_array(f, "image") for f in files]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"the PNGs in {source} differ in shape: {sorted(shapes)}")
        arrays = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]
        images = _to_nchw(np.stack(arrays), source)
    else:
        images = _to_nchw(_read_array(Path(source), "images"), source)
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
def _inpaint_options(config) -> dict:
    """`inpaint`'s keywords: the configured sampler call (`config.sampler_spec`, the pc
    sampler) and the conditioning."""
    return dict(spec=sampler_spec(config), conditioning=config.controllable.conditioning,
                particles=config.controllable.particles)


def _images_per_batch(config) -> int:
    """sampling.batch_size counts the network's batch: with SMC each image brings a population
    of controllable.particles chains, so fewer images go in at once (at least one)."""
    if config.controllable.conditioning == "smc":
        return max(1, config.sampling.batch_size // config.controllable.particles)
    return config.sampling.batch_size


def run_controllable(config, workdir, mode: str, config_file: str = "") -> dict:
    """`mode` = "inpaint" or "colorize"; writes <mode>/<mode>_<step>.npz (outputs, inputs,
    originals, mask in [0, 1]) and .png grids of the inputs, the outputs and all three."""
    device = select_device(config)
    images = read_images(config)
    channels = config.data.num_channels
    if mode == "inpaint":
        images = _gray_if_equal_channels(images) if channels == 1 else images
        if images.shape[1] != channels:
            raise ValueError(f"images have {images.shape[1]} channels, the model {channels} (data.num_channels)")
        mask = make_mask(config.controllable.mask, config.data.image_size, config.seed)
        inputs = torch.where(mask, images, torch.full_like(images, 0.5))  # missing pixels shown gray
    else:
        inputs = images.mean(1, keepdim=True)  # the channel mean: what `colorize` preserves
    model, sde, step = load_trained(config, workdir, device)
    score_fn = build_score_fn(model, sde, config)
    generator = torch.Generator(device).manual_seed(config.seed)
    options = _inpaint_options(config)
    announce(mode, config_file, workdir, device, f"checkpoint step {step}, {len(images)} images, "
             f"{config.controllable.conditioning} with {sampler_spec(config).summary()}")
    progress = Progress(mode, len(images), unit="image", seconds=config.training.progress_seconds)
    outputs, nfe, start = [], 0, time.perf_counter()
    with torch.no_grad():
        for batch in torch.split(images, _images_per_batch(config)):
            batch = to_model_space(batch.to(device), config.data.centered)
            if mode == "inpaint":
                x, nfe = inpaint(score_fn, sde, batch, mask.to(device), generator=generator, **options)
            else:
                x, nfe = colorize(score_fn, sde, batch.mean(1, keepdim=True), generator=generator, **options)
            outputs.append(to_data_space(x, config).cpu())
            progress.update(sum(len(output) for output in outputs))
    progress.close()
    outputs = torch.cat(outputs)
    seconds = time.perf_counter() - start

    folder = Path(workdir) / mode
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{mode}_{step}"
    arrays = {"outputs": outputs.numpy(), "inputs": inputs.numpy(), "originals": images.numpy()}
    if mode == "inpaint":
        arrays["mask"] = mask[0].numpy()
    np.savez(folder / f"{name}.npz", **arrays)
    shown = inputs.expand(-1, outputs.shape[1], -1, -1)
    save_image_grid(shown[:256], folder / f"{name}_inputs.png")
    save_image_grid(outputs[:256], folder / f"{name}_outputs.png")
    save_comparison(shown, outputs, images.expand_as(outputs), folder / f"{name}.png")
    report = {"step": step, "num_images": len(outputs), "nfe": nfe, "seconds": round(seconds, 3),
              "conditioning": config.controllable.conditioning,
              "npz": str(folder / f"{name}.npz"), "png": str(folder / f"{name}.png")}
    say("%s: %d images in %.1f s, written to %s", mode, len(outputs), seconds, report["npz"])
    print(json.dumps(report))
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
