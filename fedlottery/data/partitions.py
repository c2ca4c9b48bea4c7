"""Split a data set among federated clients, each with its own train / validation / test indices.

The schemes follow the papers the simulator reproduces: label-sorted *shards* (FedAvg / LotteryFL,
optionally unbalanced), *dirichlet* label skew, *pathological* k-labels-per-client, and *iid*.
Everything works on labels only (never images) with seeded numpy generators, so partitions of 60k
MNIST labels among hundreds of clients take milliseconds and are reproducible across processes.
flwr-datasets' partitioners are deliberately not used: their Dirichlet redraw rule (10 tries,
optional self-balancing) and pathological label assignment differ from the rules here, and
building a HuggingFace ``datasets.Dataset`` per call would cost more than the partitioning itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

# PartitionConfig lives in fedlottery.config (the config tree is a leaf of the import graph); re-exported here.
from fedlottery.config import SCHEMES, TEST_MODES, PartitionConfig
from fedlottery.data.datasets import Dataset
from fedlottery.errors import ConfigError

__all__ = ["ClientSplit", "PartitionConfig", "describe", "make_partitions"]

MAX_DIRICHLET_DRAWS = 100


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's data, as int64 index tensors into the shared `Dataset` (no image copies).

    `train` and `val` index ``x_train`` and are disjoint; `test` indexes ``x_test``.  `labels` are
    the distinct labels of the client's whole share of the training set (train and val together),
    i.e. the labels it "holds" in the LotteryFL sense.  Tensors may be shared between clients
    (``test='global'``): treat them as read-only.
    """

    partition_id: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    labels: tuple[int, ...]

    def __repr__(self) -> str:
        return (
            f"ClientSplit(partition_id={self.partition_id}, train={self.train.numel()}, "
            f"val={self.val.numel()}, test={self.test.numel()}, labels={self.labels})"
        )


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def make_partitions(dataset: Dataset, cfg: PartitionConfig, seed: int) -> list[ClientSplit]:
    """Split `dataset` among ``cfg.num_clients`` clients; deterministic in (dataset, cfg, seed).

    Train indices of different clients are always disjoint.  Each client's share is then divided
    into train/val (generator seeded with ``seed * 1000 + partition_id``, as in the papers' code)
    and given test indices according to ``cfg.test``.  Raises `ConfigError` (a `ValueError`) for invalid
    settings and when the data cannot satisfy them (too few shards, too few images, ...).
    """
    cfg.validate("partition")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    y_train = dataset.y_train.detach().cpu().numpy().astype(np.int64, copy=False)
    y_test = dataset.y_test.detach().cpu().numpy().astype(np.int64, copy=False)
    num_classes = int(dataset.num_classes)

    # Independent streams for the partition and the iid test split, so changing `cfg.test` never
    # changes who holds which training images.
    part_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(part_seq)
    if cfg.scheme == "shards":
        shares = _shards(y_train, cfg, rng)
    elif cfg.scheme == "dirichlet":
        shares = _dirichlet(y_train, num_classes, cfg, rng)
    elif cfg.scheme == "pathological":
        shares = _pathological(y_train, num_classes, cfg, rng)
    else:
        shares = _iid(len(y_train), cfg.num_clients, rng, what="training images")

    tests = _test_indices(y_test, num_classes, shares, y_train, cfg, np.random.default_rng(test_seq))
    splits = []
    for pid, share in enumerate(shares):
        share = np.sort(share)
        train, val = _split_val(share, cfg.val_fraction, seed * 1000 + pid)
        labels = tuple(int(c) for c in np.unique(y_train[share]))
        splits.append(
            ClientSplit(
                partition_id=pid,
                train=torch.from_numpy(train),
                val=torch.from_numpy(val),
                test=tests[pid],
                labels=labels,
            )
        )
    return splits


def describe(splits: Sequence[ClientSplit]) -> dict[str, Any]:
    """Summary statistics of a partition, small enough to log with every run."""

    def stats(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "mean": 0.0, "max": 0}
        return {"min": min(values), "mean": float(np.mean(values)), "max": max(values)}

    return {
        "num_clients": len(splits),
        "train_size": stats([int(s.train.numel()) for s in splits]),
        "val_size": stats([int(s.val.numel()) for s in splits]),
        "test_size": stats([int(s.test.numel()) for s in splits]),
        "labels_per_client": stats([len(s.labels) for s in splits]),
        "total_train": int(sum(s.train.numel() for s in splits)),
        "total_val": int(sum(s.val.numel() for s in splits)),
    }


# --------------------------------------------------------------------------------------------
# Schemes (each returns one int64 numpy array of train indices per client)
# --------------------------------------------------------------------------------------------


def _shards(y: np.ndarray, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """LotteryFL shards: label-sorted runs of `shard_size` images, dealt out at random.

    Shards are cut per class (the label-sorted order, ties by index, cut afresh at each class
    boundary), so every shard holds exactly one label; a class's last ``count % shard_size``
    images are left unused rather than forming a mixed-label shard.
    """
    size = cfg.shard_size
    order = np.argsort(y, kind="stable")
    classes, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    per_class = counts // size
    shard_starts = np.concatenate(
        [s + size * np.arange(k, dtype=np.int64) for s, k in zip(starts, per_class)] or [np.empty(0, np.int64)]
    )
    needed = cfg.num_clients * cfg.shards_per_client
    if len(shard_starts) < needed:
        raise ConfigError(
            f"partition: shards: {cfg.num_clients} clients x {cfg.shards_per_client} shards need {needed} shards of "
            f"{size} images, but the {len(y)} training images ({len(classes)} classes) make only "
            f"{len(shard_starts)}; lower num_clients, shards_per_client or shard_size"
        )
    chosen = shard_starts[rng.permutation(len(shard_starts))[:needed]].reshape(cfg.num_clients, cfg.shards_per_client)
    short = math.ceil(cfg.unbalanced_rate * size)
    keep = np.full(cfg.shards_per_client, short, dtype=np.int64)
    keep[0] = size
    out = []
    for starts_of_client in chosen:
        out.append(np.concatenate([order[s : s + k] for s, k in zip(starts_of_client, keep)]).astype(np.int64))
    return out


def _dirichlet(y: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class is split among clients by proportions drawn from Dir(alpha).

    The whole partition is redrawn while some client has fewer than `min_size` images (at most
    `MAX_DIRICHLET_DRAWS` times), which keeps every client trainable without biasing one class.
    """
    n_clients = cfg.num_clients
    if n_clients * cfg.min_size > len(y):
        raise ConfigError(
            f"partition: dirichlet: {n_clients} clients x min_size {cfg.min_size} exceed the {len(y)} training images"
        )
    members = [np.flatnonzero(y == c) for c in range(num_classes)]
    concentration = np.full(n_clients, float(cfg.alpha))
    smallest = 0
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for idx in members:
            if len(idx) == 0:
                continue
            props = rng.dirichlet(concentration)
            # Tiny alpha can underflow to all-zero or NaN proportions; fall back to one random owner.
            if not np.all(np.isfinite(props)) or props.sum() <= 0:
                props = np.zeros(n_clients)
                props[rng.integers(n_clients)] = 1.0
            cuts = np.floor(np.cumsum(props) / props.sum() * len(idx)).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(rng.permutation(idx), np.clip(cuts, 0, len(idx)))):
                parts[client].append(piece)
        shares = [np.concatenate(p).astype(np.int64) if p else np.empty(0, np.int64) for p in parts]
        smallest = min(len(s) for s in shares)
        if smallest >= cfg.min_size:
            return shares
    raise ConfigError(
        f"partition: dirichlet: after {MAX_DIRICHLET_DRAWS} draws some client still had fewer than min_size="
        f"{cfg.min_size} images (smallest {smallest}) with alpha={cfg.alpha}, {n_clients} clients; "
        f"raise alpha, or lower num_clients or min_size"
    )


def _pathological(y: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Each client holds exactly k distinct labels; each label's images are split evenly among holders.

    Labels are dealt round-robin along one seeded permutation: client i gets the labels at positions
    ``i*k .. i*k+k-1`` (mod the number of classes), so k <= num_classes consecutive positions are
    always distinct and every label is held by the same number of clients, give or take one.
    """
    k, n_clients = cfg.labels_per_client, cfg.num_clients
    present = np.unique(y)
    if k > num_classes:
        raise ConfigError(
            f"partition: pathological: labels_per_client={k} exceeds the {num_classes} classes of the data set")
    if k > len(present):
        raise ConfigError(f"partition: pathological: labels_per_client={k} but only {len(present)} labels occur "
                          "in the training set")
    perm = rng.permutation(present)
    positions = np.arange(n_clients * k).reshape(n_clients, k)
    client_labels = perm[positions % len(perm)]
    holders: dict[int, list[int]] = {}
    for client, labs in enumerate(client_labels):
        for lab in labs:
            holders.setdefault(int(lab), []).append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for lab, clients in holders.items():
        idx = rng.permutation(np.flatnonzero(y == lab))
        if len(idx) < len(clients):
            raise ConfigError(
                f"partition: pathological: label {lab} has {len(idx)} training images but {len(clients)} clients "
                "hold it; "
                f"lower num_clients or labels_per_client"
            )
        for client, piece in zip(clients, np.array_split(idx, len(clients))):
            parts[client].append(piece)
    return [np.concatenate(p).astype(np.int64) for p in parts]


def _iid(n: int, n_clients: int, rng: np.random.Generator, what: str) -> list[np.ndarray]:
    """Seeded shuffle split into `n_clients` parts whose sizes differ by at most one."""
    if n < n_clients:
        raise ConfigError(f"partition: iid: {n} {what} cannot give each of {n_clients} clients at least one")
    return [p.astype(np.int64) for p in np.array_split(rng.permutation(n), n_clients)]


# --------------------------------------------------------------------------------------------
# Per-client validation and test parts
# --------------------------------------------------------------------------------------------


def _split_val(share: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out round(fraction * n) of a client's images (at least 1 when n >= 2 and fraction > 0)."""
    n = len(share)
    if fraction <= 0 or n < 2:
        return share.astype(np.int64), np.empty(0, np.int64)
    n_val = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    picked = np.random.default_rng(seed).permutation(n)[:n_val]
    mask = np.zeros(n, dtype=bool)
    mask[picked] = True
    return share[~mask].astype(np.int64), share[mask].astype(np.int64)


def _matched_test(y_test: np.ndarray, num_classes: int, own: np.ndarray, size: int,
                  rng: np.random.Generator) -> torch.Tensor:
    """`size` test images drawn with the client's own label proportions (without replacement per label;
    different clients may share images). The personalised test for skewed, e.g. Dirichlet, splits."""
    shares = np.bincount(own, minlength=num_classes) / max(len(own), 1)
    exact = shares * size
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact)[: size - int(counts.sum())]] += 1
    picked = []
    for label in np.flatnonzero(counts):
        pool = np.flatnonzero(y_test == label)
        picked.append(rng.choice(pool, size=min(int(counts[label]), len(pool)), replace=False))
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(np.concatenate(picked)).astype(np.int64))


def _test_indices(
    y_test: np.ndarray,
    num_classes: int,
    shares: list[np.ndarray],
    y_train: np.ndarray,
    cfg: PartitionConfig,
    rng: np.random.Generator,
) -> list[torch.Tensor]:
    """Each client's test indices: its labels' test images, a sample matching its label mix, an iid share,
    or the whole test set."""
    n_clients = len(shares)
    if cfg.test == "global":
        whole = torch.arange(len(y_test), dtype=torch.int64)
        return [whole] * n_clients
    if cfg.test == "iid":
        return [torch.from_numpy(np.sort(p)) for p in _iid(len(y_test), n_clients, rng, what="test images")]
    if cfg.test == "matched":
        size = len(y_test) // n_clients
        return [_matched_test(y_test, num_classes, y_train[share], size, rng) for share in shares]
    present = np.zeros(num_classes, dtype=bool)
    cache: dict[bytes, torch.Tensor] = {}  # many clients share a label set; build each tensor once
    out = []
    for share in shares:
        present[:] = False
        present[y_train[share]] = True
        key = present.tobytes()
        if key not in cache:
            cache[key] = torch.from_numpy(np.flatnonzero(present[y_test]).astype(np.int64))
        out.append(cache[key])
    return out
