"""A synthetic data set that needs no files and no network: four classes of 8x8 grey images, each class a fixed
random pattern plus noise (easy to learn, so a two-round run already shows it working).

Two loaders, to show both forms fedlottery accepts:

- `load` returns the splits as arrays: ((x_train, y_train), (x_test, y_test), num_classes);
- `load_samples` returns them as data set objects in torchvision's style (len and [i] -> (image, label)).

A loader that reads files takes a keyword argument `root`: fedlottery passes the data root it finds from
data.root, $FEDLOTTERY_DATA or ../shared/data (None when there is none).
"""
from __future__ import annotations

import numpy as np
import torch

NUM_CLASSES = 4
SHAPE = (1, 8, 8)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images, labels cycling through the classes; the patterns are the same for every call (seed 0)."""
    patterns = np.random.default_rng(0).normal(size=(NUM_CLASSES, *SHAPE))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % NUM_CLASSES
    x = patterns[y] + 0.8 * rng.normal(size=(n, *SHAPE))
    return x.astype(np.float32), y.astype(np.int64)


def load():
    """Train and test splits as arrays, and the number of classes (here also the largest label + 1)."""
    return _blobs(800, seed=1), _blobs(400, seed=2), NUM_CLASSES


class BlobSet:
    """One split as a torchvision-style data set: len() and [i] -> (image tensor (1, 8, 8), integer label)."""

    def __init__(self, n: int, seed: int):
        self.x, self.y = _blobs(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def load_samples():
    """Train and test splits as data set objects; fedlottery reads them once and counts the classes."""
    return BlobSet(800, seed=1), BlobSet(400, seed=2)
