"""The user's own images: a folder of PNG, JPEG and WebP files (nested folders allowed), read at
one size into uint8 arrays [N, C, H, W].

Each image is converted to RGB or grayscale, its shorter side resized to the target size
(Lanczos, which antialiases when shrinking) and the centre cropped square. With
`labels_from="subfolders"` each first-level subfolder is a class (names sorted: class i is the
i-th name). Splits: a folder with `train/` and `test/` subfolders uses them; otherwise every image
goes to the test split with probability TEST_FRACTION, decided by a digest of its path relative
to the root, so the split is the same on every machine and does not move when images are added
(a folder too small to put any file there gives the test split the file of lowest digest).
A file that does not read (a dangling or looping symlink named like an image included) is
skipped with a warning naming it and a count at the end; a folder without readable images is an
error. File names are written with control characters escaped, one line per warning.

Pixels keep their whole range: 16-bit gray (PIL's I;16 and I modes) is scaled to 8 bits, not
clipped; a mode without a known range (floats, signed 16-bit) is refused, naming it.

`cached_image_folder` reads a folder once per split, size and colour into a uint8 .npy file in
the cache folder (`output_files.cache_folder`), named by a digest of every image's path, size and
modification time and of the settings, and memory-maps it from then on: a changed folder gets a
new cache, and a data set larger than memory is read a batch at a time. The cache carries
checksums (`image_cache`): one that fails them is rebuilt with a warning naming it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import List, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TEST_FRACTION = 0.1
LABEL_SOURCES = ("", "subfolders")
log = logging.getLogger(__name__)


# The modes PIL converts to RGB or L without losing range (8 bits per channel, palettes, CMYK).
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")
# 16-bit gray as PNG gives it (PIL reads it as I;16, older versions as the 32-bit I).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def printable(path) -> str:
    """`path` with control characters (a newline in a file name) escaped, so it stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _images_under(folder: Path) -> List[Path]:
    """The image files under `folder`, and the symlinks named like one whose target is missing or
    loops: listed so that reading them fails with a warning instead of vanishing unsaid."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and (p.is_file() or p.is_symlink()))


def split_root(root, split: str) -> Tuple[Path, bool]:
    """(the folder holding `split`'s images, whether the split is that whole folder)."""
    root = Path(root).expanduser()
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / split, True
    return root, False


def class_names(root) -> List[str]:
    """The sorted first-level subfolders (of `train/` when the folder is split so) that hold images."""
    folder, _ = split_root(root, "train")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _images_under(p)) if folder.is_dir() else []


def _position(relative: Path) -> int:
    """Where a file falls in [0, 1000): a digest of its relative path."""
    return int.from_bytes(hashlib.blake2b(relative.as_posix().encode(), digest_size=8).digest(), "little") % 1000


def _in_test_split(relative: Path) -> bool:
    return _position(relative) < TEST_FRACTION * 1000


def index_in_split(count: int, split: str) -> np.ndarray:
    """Which of `count` indexed items (an .npz's images) are in `split`: item i is in the test
    split when the digest of "i" says so, as a file's relative path does."""
    return np.array([_in_test_split(Path(str(i))) == (split == "test") for i in range(count)], dtype=bool)


def image_paths(root, split: str) -> List[Path]:
    """The image files of `split` under `root` (see the module docstring). A small folder whose
    digests put no file in the test split gives it the one with the lowest, so that both splits
    exist from two images on."""
    folder, whole = split_root(root, split)
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")
    paths = _images_under(folder) if folder.is_dir() else []
    if whole:
        return paths
    test = {p for p in paths if _in_test_split(p.relative_to(folder))}
    if not test and len(paths) >= 2:
        test = {min(paths, key=lambda p: (_position(p.relative_to(folder)), p.as_posix()))}
    return [p for p in paths if (p in test) == (split == "test")]


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 [channels, size, size]: converted, shorter side resized, centre cropped."""
    from PIL import Image

    with Image.open(path) as image:
        image = _eight_bit(image).convert("RGB" if channels == 3 else "L")
        width, height = image.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        if resized != image.size:
            image = image.resize(resized, Image.LANCZOS)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _eight_bit(image):
    """`image` in a mode of 8 bits per channel with its range kept: PIL's own convert clips
    16-bit gray to 0 or 255, so it is scaled here (65535 -> 255)."""
    from PIL import Image

    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode not in SIXTEEN_BIT_MODES:
        raise ValueError(f"image mode {image.mode} is not supported (supported: 8-bit gray, palette, RGB, "
                         f"RGBA, CMYK, and 16-bit gray)")
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"image mode {image.mode} holds values in [{values.min()}, {values.max()}], "
                         f"outside 16-bit gray's [0, 65535]")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _readable_images(root, split: str, size: int, channels: int, labels_from: str):
    """(number of files, an iterator of (image, label) over the readable ones) of `split`: an
    unreadable file is skipped with a warning, and counted in one at the end."""
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"data.labels_from must be '' or 'subfolders', got {labels_from!r}")
    paths = image_paths(root, split)
    folder, _ = split_root(root, split)
    if not paths:
        raise ValueError(f"no {', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images for the {split} split "
                         f"in {folder}")
    index = {name: i for i, name in enumerate(class_names(root) if labels_from == "subfolders" else [])}

    def each():
        unreadable = 0
        for path in paths:
            label = 0
            if labels_from == "subfolders":
                parts = path.relative_to(folder).parts
                if len(parts) < 2 or parts[0] not in index:
                    raise ValueError(f"{path} is not inside a class subfolder of {folder} "
                                     f"(data.labels_from='subfolders')")
                label = index[parts[0]]
            try:
                image = read_image(path, size, channels)
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds for damaged files
                unreadable += 1
                log.warning("skipping unreadable image %s: %s", printable(path),
                            printable(str(error).splitlines()[0] if str(error) else type(error).__name__))
                continue
            yield image, label
        if unreadable:
            log.warning("%d of the %d image files of the %s split in %s could not be read and were skipped",
                        unreadable, len(paths), split, printable(folder))
        if unreadable == len(paths):
            raise ValueError(f"none of the {len(paths)} image files for the {split} split in {folder} could be read")
    return len(paths), each()


def read_image_folder(root, split: str, size: int, channels: int,
                      labels_from: str = "") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(uint8 images [N, channels, size, size], int64 labels [N], class names) of `split`, in memory."""
    _, pairs = _readable_images(root, split, size, channels, labels_from)
    images, labels = zip(*pairs)
    return np.stack(images), np.asarray(labels, dtype=np.int64), class_names(root) if labels_from else []


def _folder_digest(root, split: str, size: int, channels: int, labels_from: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{split} {size} {channels} {labels_from!r}".encode())
    folder, _ = split_root(root, split)
    for path in image_paths(root, split):
        try:
            stat = path.stat()
        except OSError:  # a dangling or looping symlink: its own entry (it is skipped when read)
            stat = path.lstat()
        digest.update(f"{path.relative_to(folder).as_posix()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_image_folder(root, split: str, size: int, channels: int, labels_from: str = ""):
    """(uint8 images [N, C, size, size] memory-mapped read-only, int64 labels [N], a digest of
    their contents) of `split`, from the cache when the folder has not changed and the cache
    passes its check, else read and cached (module docstring). Building it needs no more memory
    than one image at a time; temporary files of earlier builds that were cut short are removed."""
    from .image_cache import CacheCheckError, open_cache, remove_stale_temporaries, write_cache
    from ..files.output_files import cache_folder

    folder = cache_folder() / "image_folders"
    for path in remove_stale_temporaries(folder):
        log.warning("removed %s, left by an image cache build that was cut short", printable(path))
    images_path = folder / f"{_folder_digest(root, split, size, channels, labels_from)}.npy"
    try:
        return open_cache(images_path)
    except FileNotFoundError:
        pass
    except CacheCheckError as error:
        log.warning("rebuilding the image cache %s: %s", printable(images_path), error)
    count, pairs = _readable_images(root, split, size, channels, labels_from)
    log.info("caching the %s split of %s: %d files at %dx%d (once; later runs read the cache)", split,
             printable(root), count, size, size)
    written = write_cache(images_path, count, (channels, size, size), pairs)
    log.info("cached the %s split of %s (%d images, %dx%d) in %s", split, printable(root), written, size, size,
             printable(images_path))
    return open_cache(images_path, full=True)
