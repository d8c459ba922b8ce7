"""The user's own images: a folder of PNG, JPEG and WebP files (nested folders allowed), read at
one size into uint8 arrays [N, C, H, W].

Each image is converted to RGB or grayscale, its shorter side resized to the target size
(Lanczos, which antialiases when shrinking) and the centre cropped square. With
`labels_from="subfolders"` each first-level subfolder is a class (names sorted: class i is the
i-th name). Splits: a folder with `train/` and `test/` subfolders uses them; otherwise every image
goes to the test split with probability TEST_FRACTION, decided by a digest of its path relative
to the root, so the split is the same on every machine and does not move when images are added
(a folder too small to put any file there gives the test split the file of lowest digest).
A file that does not read is skipped with a warning naming it and a count at the end; a folder
without readable images is an error.

`cached_image_folder` reads a folder once per split, size and colour into a uint8 .npy file in
the cache folder (`output_files.cache_folder`), named by a digest of every image's path, size and
modification time and of the settings, and memory-maps it from then on: a changed folder gets a
new cache, and a data set larger than memory is read a batch at a time.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TEST_FRACTION = 0.1
LABEL_SOURCES = ("", "subfolders")
log = logging.getLogger(__name__)


def _images_under(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
        image = image.convert("RGB" if channels == 3 else "L")
        width, height = image.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        if resized != image.size:
            image = image.resize(resized, Image.LANCZOS)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


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
                log.warning("skipping unreadable image %s: %s", path,
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
                continue
            yield image, label
        if unreadable:
            log.warning("%d of the %d image files of the %s split in %s could not be read and were skipped",
                        unreadable, len(paths), split, folder)
        if unreadable == len(paths):
            raise ValueError(f"none of the {len(paths)} image files for the {split} split in {folder} could be read")
    return len(paths), each()


def read_image_folder(root, split: str, size: int, channels: int,
                      labels_from: str = "") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(uint8 images [N, channels, size, size], int64 labels [N], class names) of `split`, in memory."""
    _, pairs = _readable_images(root, split, size, channels, labels_from)
    images, labels = zip(*pairs)
    return np.stack(images), np.asarray(labels, dtype=np.int64), class_names(root) if labels_from else []


def read_npz_images(path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(float images [N, C, H, W] in [0, 1], labels [N]) of `split` from an .npz holding `x`
    (uint8 or floats in [0, 1], any of the layouts `image_files.to_nchw` takes) and optionally
    `labels`; image i is in the test split when a digest of i says so (TEST_FRACTION)."""
    from .image_files import read_array, to_nchw

    path = Path(path).expanduser()
    images = to_nchw(read_array(path, "images"), path).numpy()
    labels: Optional[np.ndarray] = None
    with np.load(path, allow_pickle=False) as archive:
        if "labels" in archive.files:
            labels = np.asarray(archive["labels"]).astype(np.int64).reshape(-1)
    if labels is None:
        labels = np.zeros(len(images), dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{path} holds {len(images)} images but {len(labels)} labels")
    keep = np.array([_in_test_split(Path(str(i))) == (split == "test") for i in range(len(images))], dtype=bool)
    if not keep.any():
        raise ValueError(f"the {split} split of {path} is empty ({len(images)} images)")
    return images[keep], labels[keep]


def _folder_digest(root, split: str, size: int, channels: int, labels_from: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{split} {size} {channels} {labels_from!r}".encode())
    folder, _ = split_root(root, split)
    for path in image_paths(root, split):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_image_folder(root, split: str, size: int, channels: int, labels_from: str = ""):
    """(uint8 images [N, C, size, size] memory-mapped read-only, int64 labels [N]) of `split`,
    from the cache when the folder has not changed (module docstring). The cache is written one
    image at a time into a memory map, so building it needs no more memory than using it."""
    from .output_files import atomic_write, cache_folder

    key = _folder_digest(root, split, size, channels, labels_from)
    images_path = cache_folder() / "image_folders" / f"{key}.npy"
    labels_path = images_path.with_suffix(".labels.npy")
    if not (images_path.is_file() and labels_path.is_file()):
        count, pairs = _readable_images(root, split, size, channels, labels_from)
        labels = []

        def write_images(temporary):
            mapped = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(count, channels, size, size))
            for row, (image, label) in enumerate(pairs):
                mapped[row] = image
                labels.append(label)
            mapped.flush()
            if len(labels) < count:  # unreadable files were skipped: keep the rows written
                kept = np.array(mapped[:len(labels)])
                del mapped
                with open(temporary, "wb") as file:
                    np.save(file, kept)

        atomic_write(images_path, write_images)
        atomic_write(labels_path, lambda temporary: _save_npy(temporary, np.asarray(labels, dtype=np.int64)))
        log.info("cached the %s split of %s (%d images, %dx%d) in %s", split, root, len(labels), size, size,
                 images_path)
    return np.load(images_path, mmap_mode="r"), np.load(labels_path)


def _save_npy(path, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # a file object: np.save would append .npy to the name
        np.save(file, array)
