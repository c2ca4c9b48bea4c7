"""Deterministic train/validation splits (used by the digits loader and the IMP runner)."""

from __future__ import annotations

import numpy as np
import torch


def train_val_split(
    labels: torch.Tensor, val_size: int, seed: int, stratified: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out `val_size` examples; returns sorted int64 (train_indices, val_indices).

    Deterministic in `seed` (numpy PCG64, independent of torch's global RNG).  With `stratified`,
    each class gets its share of `val_size` by largest-remainder rounding (ties to the smaller
    class label), so class proportions match the full set as closely as integers allow.
    """
    y = torch.as_tensor(labels)
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integers, got {y.dtype}")
    n = int(y.shape[0])
    val_size = int(val_size)
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    if val_size >= n and val_size > 0:
        raise ValueError(f"val_size={val_size} leaves no training data out of {n} examples")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if val_size == 0:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)

    rng = np.random.default_rng(int(seed))
    y_np = y.detach().cpu().numpy()
    if not stratified:
        val = rng.permutation(n)[:val_size]
    else:
        classes, inverse, counts = np.unique(y_np, return_inverse=True, return_counts=True)
        scaled = counts.astype(np.int64) * val_size  # exact share of class c is scaled[c] / n
        quota = scaled // n
        remainder = val_size - int(quota.sum())
        # Largest fractional parts first (integer arithmetic, so no float ties); stable sort keeps
        # the smaller class label first on equal remainders.
        order = np.argsort(-(scaled % n), kind="stable")
        quota[order[:remainder]] += 1
        picks = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            picks.append(rng.permutation(members)[: quota[c]])
        val = np.concatenate(picks)
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return (
        torch.from_numpy(np.flatnonzero(~mask).astype(np.int64)),
        torch.from_numpy(np.flatnonzero(mask).astype(np.int64)),
    )
