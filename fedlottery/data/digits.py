"""scikit-learn's 8x8 digits: the one data set that needs no files under a data root.

The images are read straight from the CSV file scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`,
what `sklearn.datasets.load_digits` parses), found without importing scikit-learn: that import costs 1.3-2 s,
in the driver and again in every client actor, for a 100 KB file. A scikit-learn without that file falls back
to its loader.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import torch

from fedlottery.data.record import Dataset
from fedlottery.data.splits import train_val_split

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def load_digits() -> Dataset:
    """sklearn's 8x8 digits with a fixed stratified 360-image test set.

    The split uses its own fixed seed (not the run seed) and our own splitter (not sklearn's), so
    the test set is a stable property of the data set across runs and library versions.  Pixels are
    scaled to [0, 1] and standardised with one mean/std from the training part (per-pixel statistics
    would divide by zero on the always-blank border pixels).
    """
    pixels, target = digits_arrays()
    images = pixels.reshape(-1, 8, 8).astype(np.float32) / 16.0
    labels = torch.as_tensor(target.astype(np.int64))
    train_idx, test_idx = train_val_split(labels, DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED, stratified=True)
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).contiguous()
    x_test = ((x_test - mean) / std).contiguous()
    return Dataset("digits", x_train, labels[train_idx].clone(), x_test, labels[test_idx].clone(), 10)


def _shipped_csv() -> pathlib.Path | None:
    """scikit-learn's digits.csv.gz, located from the package's spec (no import), or None."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) in 0..16, labels (1797,)), exactly what `sklearn.datasets.load_digits` returns."""
    path = _shipped_csv()
    if path is None:
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return np.asarray(bunch.data), np.asarray(bunch.target)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)
