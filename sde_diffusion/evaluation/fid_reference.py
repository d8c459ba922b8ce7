"""FID's reference statistics: what generated images are compared with.

FID is only comparable across papers when the reference is the same: Inception features of the
whole training split (EDM's and clean-fid's CIFAR-10 convention) or published statistics by name.
`split_statistics` computes the feature mean and covariance of a whole data split once, streaming
it in chunks (a split larger than memory never sits in memory as features), and caches them in the
workdir under a digest of every image and of the feature extractor's weights, so a changed data
set or Inception file recomputes them and an unchanged one is read back. `cleanfid_statistics`
reads clean-fid's published statistics (e.g. "cifar10", split "train", at 32x32) from clean-fid's
own stats folder, fetched there only when downloads are allowed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .sample_quality import FeatureExtractor, ReferenceStatistics, image_features, to_uint8_hwc
from ..files.output_files import atomic_write

CHUNK = 1000           # images featurized at a time
KID_FEATURES = 5000    # reference features kept for KID (its subsets hold 1000)


def file_digest(path) -> str:
    """A digest of a file's bytes (the Inception weights a cache was computed with)."""
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _uint8_chunks(batch: Callable[[torch.Tensor], torch.Tensor], count: int):
    """The split as uint8 [n, H, W, C] chunks; `batch(indices)` gives float images in [0, 1]."""
    for start in range(0, count, CHUNK):
        yield start, to_uint8_hwc(batch(torch.arange(start, min(start + CHUNK, count))))


def split_statistics(batch: Callable[[torch.Tensor], torch.Tensor], count: int, extractor: FeatureExtractor,
                     extractor_id: str, cache_dir, name: str, *, device="cpu", seed: int = 0) -> ReferenceStatistics:
    """Feature statistics of the `count` images that `batch(indices)` returns (a data set's
    `batch`), read from `cache_dir` when it holds them for these very images and extractor,
    else computed (mean and covariance accumulated chunk by chunk in float64) and written there."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{extractor_id} {count}".encode())
    for _, images in _uint8_chunks(batch, count):
        digest.update(images.tobytes())
    path = Path(cache_dir) / f"fid_reference_{name}_{digest.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return ReferenceStatistics(saved["mean"], saved["cov"], saved["kid_features"], int(saved["count"]))
    if count < 2:
        raise ValueError(f"FID's reference {name} needs at least 2 images, it has {count}")
    import logging
    import time

    log, began = logging.getLogger(__name__), time.perf_counter()
    log.info("FID reference %s: Inception statistics of %d images (once: cached in %s)", name, count, cache_dir)
    kept = np.sort(np.random.default_rng(seed).choice(count, min(count, KID_FEATURES), replace=False))
    total = outer = None
    kid_features = []
    for start, images in _uint8_chunks(batch, count):
        features = image_features(images, feature_extractor=extractor, device=device).astype(np.float64)
        total = features.sum(axis=0) if total is None else total + features.sum(axis=0)
        outer = features.T @ features if outer is None else outer + features.T @ features
        chosen = kept[(kept >= start) & (kept < start + len(images))] - start
        kid_features.append(features[chosen].astype(np.float32))
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)  # np.cov's unbiased estimate
    statistics = ReferenceStatistics(mean, cov, np.concatenate(kid_features), count)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary):
        with open(temporary, "wb") as file:
            np.savez(file, mean=mean, cov=cov, kid_features=statistics.kid_features, count=count)
    atomic_write(path, write)
    log.info("FID reference %s: done in %.1f s, %s", name, time.perf_counter() - began, path)
    return statistics


def cleanfid_statistics(name: str, split: str, resolution: int, *, download: bool = False,
                        mode: str = "clean") -> ReferenceStatistics:
    """clean-fid's published FID and KID statistics `name` / `split` at `resolution` (its file
    names: e.g. cifar10_clean_train_32.npz), from clean-fid's stats folder; fetched into it by
    clean-fid only when `download`, else FileNotFoundError naming the files and the folder."""
    import cleanfid
    from cleanfid.fid import get_reference_statistics

    folder = os.path.join(os.path.dirname(cleanfid.__file__), "stats")
    files = [f"{name}_{mode}_{split}_{resolution}.npz".lower(), f"{name}_{mode}_{split}_{resolution}_kid.npz".lower()]
    missing = [file for file in files if not os.path.isfile(os.path.join(folder, file))]
    if missing and not download:
        raise FileNotFoundError(f"clean-fid's statistics {', '.join(missing)} are not in {folder}: download them "
                                f"from https://www.cs.cmu.edu/~clean-fid/stats/ into it, or set "
                                f"eval.download_inception=True to let clean-fid fetch them")
    try:
        mean, cov = get_reference_statistics(name, resolution, mode=mode, split=split)
        kid_features = get_reference_statistics(name, resolution, mode=mode, split=split, metric="KID")
    except Exception as error:  # noqa: BLE001 (clean-fid's download raises whatever requests raises)
        raise FileNotFoundError(f"clean-fid's statistics {name}/{split} at {resolution}: {error}") from None
    return ReferenceStatistics(np.asarray(mean), np.asarray(cov), np.asarray(kid_features), -1)
