"""Training data: 2-D toy distributions, image data sets read from their standard files, the
scaling and augmentation applied to images, and a resumable stream of index batches.

Every data set is loaded whole into memory as `.data` (float32; images [N, C, H, W] in [0, 1],
toy points [N, 2] unscaled) and `.labels` (int64 [N]); training draws batches by indexing with
`BatchStream`, so no DataLoader worker state has to be saved to resume a run exactly.
Image files are parsed here (IDX for MNIST, the CIFAR-10 python batches) rather than through
torchvision, which is needed only for the opt-in `download=True`, and nothing is ever fetched
unless asked for.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .dataset_files import locate_files
from .dataset_formats import read_cifar_batch, read_idx
from .toy_data import TOY_DATA, toy_mixture
from .user_data import check_npz_root, folder_class_names, folder_classes, npz_classes
from ..utils import Registry

SPLITS = ("train", "test")


def derive_seed(*parts) -> int:
    """A 63-bit seed from `parts` (ints and strings), the same in every process and Python
    version, unlike hash(), so that streams derived from one user seed are reproducible."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


class ArrayDataset(torch.utils.data.Dataset):
    """A data set held in memory: `data` [N, ...] float32 and `labels` [N] int64.
    `fingerprint`: a digest of the contents of the user's own data (folders, .npz), which a
    resumed run compares with its checkpoint's; None for the published sets."""

    fingerprint = None

    def __init__(self, data: torch.Tensor, labels: torch.Tensor):
        if data.shape[0] != labels.shape[0]:
            raise ValueError(f"{data.shape[0]} samples but {labels.shape[0]} labels")
        self.data = data.to(torch.float32).contiguous()
        self.labels = labels.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def batch(self, indices) -> torch.Tensor:
        """The float32 data of `indices`, what training draws."""
        return self.data[indices]


class MappedImageDataset(ArrayDataset):
    """Images kept as uint8 [N, C, H, W] in a memory-mapped .npy file, converted to float in
    [0, 1] per batch, so that a data set larger than memory trains: only the pages of a batch
    are read. `.data` converts the whole set (what the small test split's metrics read)."""

    def __init__(self, images: np.ndarray, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels.to(torch.int64).contiguous()

    @property
    def data(self) -> torch.Tensor:
        return _to_unit_interval(np.array(self.images))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.batch(torch.as_tensor([index]))[0], self.labels[index]

    def batch(self, indices) -> torch.Tensor:
        order = np.asarray(torch.as_tensor(indices).cpu())
        return _to_unit_interval(self.images[np.sort(order)][np.argsort(np.argsort(order))])


# -- registries ------------------------------------------------------------------------------
# A dataset loader is called as loader(split, root=, image_size=, download=, num_points=, seed=)
# and ignores the arguments that do not concern it (toy data have no root, images no num_points).
DATASETS: Registry[Callable[..., ArrayDataset]] = Registry("dataset")


@dataclass(frozen=True)
class DatasetFacts:
    """What a data set declares where it is registered, all the application needs to know of it:
    images ([N, C, H, W] in [0, 1]) or points ([N, dim]); its class count (0: no labels; None:
    read from the user's files); whether its files can be fetched into data.root (download); the
    judge that scores samples of it: "digits" (the bundled digits' classifier), "classifier" (one
    fitted on its training split, where the split has labels; FID/KID where it has none), or ""
    (FID/KID for images, sliced Wasserstein for points).
    For the user's own data: user_root, what data.root must name ("folder" or "file"),
    check_root(path, field) to read its header before anything is written, read_classes(data)
    the class count its files hold (None: none); system_root, a folder that holds its files
    when data.root is unset; class_names(data) the names of its classes, where its files name them;
    oracle() the exact distribution it is drawn from (a `GaussianMixture`), for oracle studies."""
    images: bool = False
    num_classes: Optional[int] = 0
    download: bool = False
    judge: str = ""
    user_root: str = ""
    check_root: Optional[Callable] = None
    read_classes: Optional[Callable] = None
    system_root: Optional[Path] = None
    class_names: Optional[Callable] = None
    oracle: Optional[Callable] = None

    def classes_in(self, data) -> Optional[int]:
        """The classes the configured data hold: read from the user's files where it declares
        `read_classes`, else its declared count (None for none)."""
        return self.read_classes(data) if self.read_classes else (self.num_classes or None)

    def names_in(self, data) -> Optional[list]:
        """The names of the configured data's classes, class i first, where its files name them."""
        return self.class_names(data) if self.class_names else None


DATASET_FACTS: Dict[str, DatasetFacts] = {}


def register_dataset(name: str, **facts) -> Callable:
    """Decorator: register `loader` as data set `name` with its `DatasetFacts` (keywords)."""
    declared = DatasetFacts(**facts)

    def decorator(loader: Callable[..., ArrayDataset]) -> Callable[..., ArrayDataset]:
        DATASETS.register(name)(loader)
        DATASET_FACTS[name] = declared
        return loader
    return decorator


def dataset_facts(name: str) -> DatasetFacts:
    """The declared facts of data set `name` (a name not registered: ValueError listing the known)."""
    DATASETS.get_or_raise(name)
    return DATASET_FACTS.get(name, DatasetFacts())


def load_dataset(name: str, split: str, *, root=None, image_size: Optional[int] = None,
                 download: bool = False, num_points: int = 10000, seed: int = 0, num_channels: int = 3,
                 labels_from: str = "") -> ArrayDataset:
    """Load data set `name` ('moons', 'digits', 'mnist', 'folder', ...; see DATASETS) for `split`.

    root: the directory with the files of mnist / cifar10, the image folder, or the .npz file;
    image_size: the side length of the returned images (None: the data set's own); download:
    fetch missing mnist / cifar10 files with torchvision; num_points, seed: size (train; test
    gets num_points // 5) and seed of toy data; num_channels, labels_from: a folder's images as
    RGB (3) or gray (1), and its classes ('subfolders') or none ('').
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    loader = DATASETS.get_or_raise(name)
    return loader(split, root=root, image_size=image_size, download=download, num_points=num_points,
                  seed=seed, num_channels=num_channels, labels_from=labels_from)


def _toy_loader(kind: str) -> Callable[..., ArrayDataset]:
    def load(split: str, *, num_points: int, seed: int, **ignored) -> ArrayDataset:
        n = num_points if split == "train" else num_points // 5
        # Train and test draw from different seed-derived streams, so they are independent.
        generator = torch.Generator().manual_seed(derive_seed(seed, "toy", kind, split))
        points = TOY_DATA.get_or_raise(kind)(n, generator)
        return ArrayDataset(points, torch.zeros(n, dtype=torch.int64))
    load.__doc__ = TOY_DATA[kind].__doc__
    return load


for _kind in list(TOY_DATA):
    if _kind != "gmm":
        register_dataset(_kind)(_toy_loader(_kind))


@register_dataset("gmm", num_classes=8, oracle=toy_mixture)
def load_gmm(split: str, *, num_points: int, seed: int, **ignored) -> ArrayDataset:
    """`toy_data.gmm`'s points (the same draws), labelled with the component each came from,
    so the toy set also serves class-conditional models (8 classes)."""
    n = num_points if split == "train" else num_points // 5
    generator = torch.Generator().manual_seed(derive_seed(seed, "toy", "gmm", split))
    points, components = toy_mixture().sample(n, generator=generator, return_components=True)
    return ArrayDataset(points.to(torch.float32), components)


# -- image helpers -----------------------------------------------------------------------------
def _to_unit_interval(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size without antialiasing (a no-op at the native size).
    Bilinear weights are convex, so the clamp only removes rounding excursions."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False).clamp_(0, 1)


# -- digits: scikit-learn's bundled 8x8 digits -----------------------------------------------
DIGITS_TEST_FRACTION = 0.15


@register_dataset("digits", images=True, num_classes=10, judge="digits")
def load_digits(split: str, *, image_size: Optional[int] = None, **ignored) -> ArrayDataset:
    """sklearn.datasets.load_digits (1797 images 8x8, 17 grey levels 0..16, 10 classes), bundled
    with scikit-learn so it needs no files. Split: for every class, its last
    round(0.15 * count) images in the file's order are the test set (~270 in all), the rest
    train; so both splits hold every class in the same proportions. image_size: 8 or 16."""
    from sklearn.datasets import load_digits as sklearn_digits

    if image_size not in (None, 8, 16):
        raise ValueError(f"digits come at image_size 8 or 16, got {image_size}")
    bunch = sklearn_digits()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    in_test = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        (members,) = torch.nonzero(labels == label, as_tuple=True)
        in_test[members[len(members) - round(DIGITS_TEST_FRACTION * len(members)):]] = True
    keep = in_test if split == "test" else ~in_test
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[keep, None] / 16
    return ArrayDataset(_resize(images, image_size or 8), labels[keep])


# -- MNIST: IDX files --------------------------------------------------------------------------
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)"
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Debian/Ubuntu's dataset-fashion-mnist package puts the IDX files here.
FASHION_MNIST_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _load_idx_images(name: str, split: str, root, image_size: Optional[int], download: bool,
                     raw_folder: str, url: str) -> ArrayDataset:
    """An MNIST-format set from its IDX files (plain or .gz) in `root` or torchvision's
    `root/<raw_folder>`. image_size: 28 (native), 32 (zero padding of 2 pixels per side, as
    is usual for U-Nets whose levels halve the size: 28 does not halve twice into an even size),
    anything else a bilinear resize. 1 channel."""
    image_path, label_path = locate_files(name, root, download, (".", raw_folder), MNIST_FILES[split], ("", ".gz"), url)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(f"{image_path} and {label_path} are not {name} images [N, H, W] of "
                         f"bytes and labels [N]: got {images.shape}, {labels.shape}")
    data = _to_unit_interval(images[:, None])
    if image_size == 32 and data.shape[-1] == 28:
        data = F.pad(data, (2, 2, 2, 2))
    else:
        data = _resize(data, image_size or data.shape[-1])
    return ArrayDataset(data, torch.from_numpy(labels.astype(np.int64)))


@register_dataset("mnist", images=True, num_classes=10, download=True, judge="classifier")
def load_mnist(split: str, *, root=None, image_size: Optional[int] = None, download: bool = False,
               **ignored) -> ArrayDataset:
    """MNIST (`_load_idx_images`)."""
    return _load_idx_images("mnist", split, root, image_size, download, "MNIST/raw", MNIST_URL)


@register_dataset("fashion_mnist", images=True, num_classes=10, download=True, judge="classifier",
                  system_root=FASHION_MNIST_SYSTEM_ROOT)
def load_fashion_mnist(split: str, *, root=None, image_size: Optional[int] = None, download: bool = False,
                       **ignored) -> ArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017; same files as MNIST's, `_load_idx_images`), by default
    from FASHION_MNIST_SYSTEM_ROOT when that folder exists."""
    if root is None and FASHION_MNIST_SYSTEM_ROOT.is_dir():
        root = FASHION_MNIST_SYSTEM_ROOT
    return _load_idx_images("fashion_mnist", split, root, image_size, download, "FashionMNIST/raw",
                            FASHION_MNIST_URL)


# -- CIFAR-10: python pickle batches -------------------------------------------------------------
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


@register_dataset("cifar10", images=True, num_classes=10, download=True)
def load_cifar10(split: str, *, root=None, image_size: Optional[int] = None, download: bool = False,
                 **ignored) -> ArrayDataset:
    """CIFAR-10 from its python batches in `root/cifar-10-batches-py` or `root` itself
    (train: data_batch_1..5 in order; test: test_batch). 3 channels; image_size 32 is native,
    anything else a bilinear resize."""
    paths = locate_files("cifar10", root, download, ("cifar-10-batches-py", "."),
                    CIFAR10_FILES[split], ("",), CIFAR10_URL)
    batches = [read_cifar_batch(path) for path in paths]
    data = _to_unit_interval(np.concatenate([b["data"] for b in batches]))
    labels = torch.from_numpy(np.concatenate([b["labels"] for b in batches]))
    return ArrayDataset(_resize(data, image_size or 32), labels)


# -- the user's own images: a folder, or an .npz ----------------------------------------------
@register_dataset("folder", images=True, num_classes=None, user_root="folder", read_classes=folder_classes,
                  class_names=folder_class_names, judge="classifier")
def load_folder(split: str, *, root=None, image_size: Optional[int] = None, num_channels: int = 3,
                labels_from: str = "", **ignored) -> ArrayDataset:
    """PNG / JPEG / WebP files under `root` (`image_folder`), resized and centre-cropped, read
once into a memory-mapped uint8 cache (`image_folder.cached_image_folder`). `.fingerprint` is the
digest of the cache's contents."""
    from .image_folder import cached_image_folder

    if root is None or image_size is None:
        raise ValueError("the folder data set needs data.root (the folder) and data.image_size")
    images, labels, digest = cached_image_folder(root, split, image_size, num_channels, labels_from)
    dataset = MappedImageDataset(images, torch.from_numpy(labels))
    dataset.fingerprint = digest
    return dataset


@register_dataset("npz", images=True, num_classes=None, user_root="file", check_root=check_npz_root,
                  read_classes=npz_classes, judge="classifier")
def load_npz(split: str, *, root=None, image_size: Optional[int] = None, **ignored) -> ArrayDataset:
    """Images (`x`: uint8 or floats in [0, 1], square, any layout `image_files.to_nchw` takes) and
    optional `labels` (class indices) of the .npz file `root`; image i is in the test split when
    a digest of i says so (`image_folder.TEST_FRACTION`). `.fingerprint` is a digest of the split's
    images and labels as read."""
    from ..files.image_files import read_npz_images
    from .image_folder import index_in_split

    if root is None:
        raise ValueError("the npz data set needs data.root: the .npz file")
    path = Path(root).expanduser()
    images, labels = read_npz_images(path, lambda count: index_in_split(count, split))
    if not len(images):
        raise ValueError(f"the {split} split of {path} is empty")
    digest = hashlib.blake2b(digest_size=16)
    for array in (images, labels):
        digest.update(f"{array.dtype} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    data = torch.from_numpy(np.ascontiguousarray(images))
    dataset = ArrayDataset(_resize(data, image_size) if image_size else data, torch.from_numpy(labels))
    dataset.fingerprint = digest.hexdigest()
    return dataset


# -- batches -------------------------------------------------------------------------------------
class BatchStream:
    """Endless batches of indices into a data set of `dataset_size` samples.

    Epoch e visits the indices in a permutation drawn from a generator seeded with
    derive_seed(seed, e) (or in order when not `shuffle`), so that the whole sequence is a
    function of (seed, epoch, position) and `state_dict()` = {epoch, position} resumes it
    exactly. With `drop_last` an epoch's final incomplete batch is skipped.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        if dataset_size < 1 or batch_size < 1:
            raise ValueError(f"need dataset_size >= 1 and batch_size >= 1, got {dataset_size}, {batch_size}")
        if drop_last and batch_size > dataset_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {dataset_size} samples and "
                             f"drop_last is set: no batch would ever be produced")
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order, self._order_epoch = None, None

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.dataset_size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _epoch_order(self) -> torch.Tensor:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
                self._order = torch.randperm(self.dataset_size, generator=generator)
            else:
                self._order = torch.arange(self.dataset_size)
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        remaining = self.dataset_size - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._epoch_order()[self.position:self.position + self.batch_size]
        self.position += batch.shape[0]
        return batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.dataset_size:
            raise ValueError(f"the saved data position (epoch {epoch}, sample {position}) lies outside the "
                             f"{self.dataset_size} samples of the training data: the data changed since it was saved")
        self.epoch, self.position = epoch, position
