"""Judges for small gray images that need no download: a classifier trained on the data set's own
training split, whose hidden layer is the feature space for a Frechet distance (FID computed on
the data set's classifier features instead of Inception's) and whose predictions tell which
class a sample looks like.

Inception features, trained on photographs, say little about 16x16 or 28x28 gray digits and
clothes and are not on this machine; a network trained on the data itself separates what matters
there (which class, and how well formed). The classifier is scikit-learn's MLPClassifier with one
tanh hidden layer, fitted with a fixed seed, so a judge is the same on every machine and run.
`DigitsJudge` is the bundled digits' (fitted in a second); `cached_judge` fits one for a larger
labelled set once and keeps its weights in a cache folder, keyed by a digest of the data.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data.datasets import load_digits
from .frechet import frechet_distance as gaussian_frechet_distance


class ImageJudge:
    """Classifier of images in [0, 1], [N, C, S, S], from the weights of a one-hidden-layer tanh
    MLP on their pixels (`fit` makes one)."""

    def __init__(self, weights, biases, image_size: int):
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64) for b in biases]
        self.image_size = image_size

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, hidden: int = 64, seed: int = 0,
            max_iter: int = 600) -> "ImageJudge":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        # tanh rather than ReLU: no unit is ever constant, so the features' covariance has
        # full rank and the Frechet distance's matrix square root is well defined.
        classifier = MLPClassifier(hidden_layer_sizes=(hidden,), activation="tanh", alpha=1e-3,
                                   max_iter=max_iter, random_state=seed)
        judge = cls([], [], images.shape[-1])
        with warnings.catch_warnings():  # a capped number of epochs is the design for large sets
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(judge._flat(images), torch.as_tensor(labels).numpy())
        judge.weights, judge.biases = list(classifier.coefs_), list(classifier.intercepts_)
        return judge

    def _flat(self, images: torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images, dtype=torch.float64)
        inputs = self.weights[0].shape[0] if self.weights else None  # C * S * S of the fitted classifier
        if images.ndim != 4 or images.shape[2:] != (self.image_size, self.image_size) or \
                (inputs is not None and images[0].numel() != inputs):
            channels = "C" if inputs is None else inputs // self.image_size ** 2
            raise ValueError(f"expected images [N, {channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(images.shape)}")
        return images.clamp(0, 1).reshape(len(images), -1).numpy()

    def features(self, images: torch.Tensor) -> np.ndarray:
        """The hidden layer's activations, [N, hidden]."""
        return np.tanh(self._flat(images) @ self.weights[0] + self.biases[0])

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return np.argmax(self.features(images) @ self.weights[1] + self.biases[1], axis=1)

    def accuracy(self, images: torch.Tensor, labels) -> float:
        return float((self.predict(images) == np.asarray(labels)).mean())


def DigitsJudge(image_size: int = 16, hidden: int = 64, seed: int = 0) -> ImageJudge:  # noqa: N802
    """The bundled digits' judge ([N, 1, S, S] with S = image_size, 8 or 16)."""
    train = load_digits("train", image_size=image_size)
    return ImageJudge.fit(train.data, train.labels, hidden=hidden, seed=seed)


def cached_judge(images: torch.Tensor, labels: torch.Tensor, hidden: int = 128, seed: int = 0,
                 max_iter: int = 30) -> ImageJudge:
    """The judge of a labelled training split (30 epochs of Adam by default: Fashion-MNIST's at
    32x32 reads its test split at 89%), fitted once and then read from the cache folder."""
    from ..files.output_files import atomic_write, cache_folder

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(images.shape)} {hidden} {seed} {max_iter}".encode())
    digest.update(torch.as_tensor(images, dtype=torch.float32).contiguous().numpy().tobytes())
    digest.update(torch.as_tensor(labels, dtype=torch.int64).contiguous().numpy().tobytes())
    path = cache_folder() / "judges" / f"judge_{digest.hexdigest()}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return ImageJudge([stored["w0"], stored["w1"]], [stored["b0"], stored["b1"]], images.shape[-1])
    import logging
    import time

    log, start = logging.getLogger(__name__), time.perf_counter()
    log.info("fitting the classifier judge on %d training images (%d epochs, once: kept in %s)", len(images),
             max_iter, path.parent)
    judge = ImageJudge.fit(images, labels, hidden=hidden, seed=seed, max_iter=max_iter)
    log.info("fitted the classifier judge in %.1f s", time.perf_counter() - start)
    buffer = io.BytesIO()
    np.savez(buffer, w0=judge.weights[0], w1=judge.weights[1], b0=judge.biases[0], b1=judge.biases[1])
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(buffer.getvalue()))
    return judge


# How many sets of real training images the floor of a sample count is the mean of.
FLOOR_DRAWS = 5


def floor_indices(num_train: int, count: int, seed: int, draw: int) -> torch.Tensor:
    """The training images draw `draw` of the floor for `count` samples scores: the first
    min(count, num_train) of a permutation of the split drawn with seed `seed + draw`."""
    generator = torch.Generator().manual_seed(int(seed) + draw)
    return torch.randperm(num_train, generator=generator)[:min(count, num_train)]


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets (as `fid_kid` computes it)."""
    features, reference = np.asarray(features, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return gaussian_frechet_distance(features.mean(axis=0), np.cov(features, rowvar=False),
                                     reference.mean(axis=0), np.cov(reference, rowvar=False))


class RealDataFloor:
    """What a perfect model would score at a sample count: the FD of as many real training images
    (`train`, [N, 1, S, S] in [0, 1]) against the test features `reference`, in `judge`'s feature
    space, over FLOOR_DRAWS draws (`floor_indices`, seeds `seed`, `seed + 1`, ...). FD is biased
    upwards at small counts, so a model is judged against the floor of its own count, never the
    floor of a whole split. Calling it with a count gives {"<key>_floor": mean,
    "<key>_floor_spread": the draws' standard deviation, "<key>_floor_samples": the images per
    draw}, computed once per count."""

    def __init__(self, judge, train: torch.Tensor, reference: np.ndarray, key: str, seed: int = 0,
                 draws: int = FLOOR_DRAWS):
        self.judge, self.train, self.reference, self.key = judge, train, reference, key
        self.seed, self.draws, self._known = seed, draws, {}

    def __call__(self, count: int) -> dict:
        if count not in self._known:
            import logging

            logging.getLogger(__name__).info("%s floor: %d draws of %d real training images against the test split",
                                             self.key, self.draws, min(count, len(self.train)))
            values = [frechet_distance(self.judge.features(self.train[floor_indices(len(self.train), count,
                                                                                    self.seed, draw)]),
                                       self.reference) for draw in range(self.draws)]
            self._known[count] = {f"{self.key}_floor": float(np.mean(values)),
                                  f"{self.key}_floor_spread": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                  f"{self.key}_floor_samples": min(count, len(self.train))}
        return self._known[count]
