"""A judge for digit samples that needs no download: a small classifier trained on the bundled
digits, whose hidden layer is the feature space for a Frechet distance (FID computed on
digit-classifier features instead of Inception's) and whose predictions tell which class a sample
looks like.

Inception features, trained on photographs, say little about 16x16 grey digits and are not on
this machine; a network trained on the digits themselves separates what matters there (which
digit, and how well formed). The classifier is scikit-learn's MLPClassifier, fitted with a fixed
seed on the training split, so the judge is the same on every machine and run.
"""
from __future__ import annotations

import numpy as np
import torch

from .datasets import load_digits


class DigitsJudge:
    """Classifier of digit images in [0, 1], [N, 1, S, S] with S = image_size (8 or 16)."""

    def __init__(self, image_size: int = 16, hidden: int = 64, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        train = load_digits("train", image_size=image_size)
        self.image_size = image_size
        # tanh rather than ReLU: no unit is ever constant, so the features' covariance has
        # full rank and the Frechet distance's matrix square root is well defined.
        self.classifier = MLPClassifier(hidden_layer_sizes=(hidden,), activation="tanh", alpha=1e-3,
                                        max_iter=600, random_state=seed)
        self.classifier.fit(self._flat(train.data), train.labels.numpy())

    def _flat(self, images: torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images, dtype=torch.float64)
        if images.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"expected images [N, 1, {self.image_size}, {self.image_size}], "
                             f"got {tuple(images.shape)}")
        return images.clamp(0, 1).reshape(len(images), -1).numpy()

    def features(self, images: torch.Tensor) -> np.ndarray:
        """The hidden layer's activations, [N, hidden]."""
        weights, bias = self.classifier.coefs_[0], self.classifier.intercepts_[0]
        return np.tanh(self._flat(images) @ weights + bias)

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.predict(self._flat(images))

    def accuracy(self, images: torch.Tensor, labels) -> float:
        return float((self.predict(images) == np.asarray(labels)).mean())
