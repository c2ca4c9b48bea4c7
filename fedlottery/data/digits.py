"""scikit-learn's 8x8 digits: the one data set that needs no files under a data root."""

from __future__ import annotations

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
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = train_val_split(labels, DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED, stratified=True)
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).contiguous()
    x_test = ((x_test - mean) / std).contiguous()
    return Dataset("digits", x_train, labels[train_idx].clone(), x_test, labels[test_idx].clone(), 10)
