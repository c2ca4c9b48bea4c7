"""Split a data set among federated clients, each with its own train / validation / test indices.

The schemes follow the papers the simulator reproduces: label-sorted *shards* (FedAvg / LotteryFL,
optionally unbalanced), *dirichlet* label skew, *pathological* k-labels-per-client, *iid*, and *flwr*:
any flwr-datasets partitioner named in the config.

``iid``, ``dirichlet``, ``pathological`` and ``flwr`` run flwr-datasets' partitioners (IidPartitioner,
DirichletPartitioner, PathologicalPartitioner, or the one named) on an in-memory ``datasets.Dataset`` of
two columns, the label and the row's index into the training set, in a seeded random order: the order makes
partitioners that take no seed (IidPartitioner, LinearPartitioner, ...) seeded too, and the index column maps
each partition back to training images.  ``shards`` stays hand-written: flwr-datasets' ShardPartitioner cuts
shards across class boundaries (a shard may hold two labels) and has no unbalanced rate, so it cannot express
LotteryFL's one-label shards (see `_shards`).  Only labels are ever looked at, never images, and one seed
drives everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pathlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

# PartitionConfig lives in fedlottery.config (the config tree is a leaf of the import graph); re-exported here.
from fedlottery.config import PartitionConfig
from fedlottery.data.flwr_partitioners import flwr_partitioner
from fedlottery.data.record import Dataset
from fedlottery.errors import ConfigError

__all__ = ["ClientSplit", "PartitionConfig", "describe", "make_partitions"]

logger = logging.getLogger(__name__)

# DirichletPartitioner (flwr-datasets 0.6.1) draws at most 11 times (its `sampling_try == 10` limit).
FLWR_DIRICHLET_DRAWS = 11
# PathologicalPartitioner's label assignment: each client's first label is `partition_id % classes` (so every
# label is used once num_clients >= classes), the others drawn at random; the mode NIID-Bench (Li et al. 2022)
# used, says flwr-datasets.  "random" and "deterministic" are available through scheme: flwr.
PATHOLOGICAL_MODE = "first-deterministic"
_PARTITION_CACHE_FORMAT = 1  # the layout of a partition cache file (see `_cached_shares`)


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


def make_partitions(dataset: Dataset, cfg: PartitionConfig, seed: int, cache: bool = True) -> list[ClientSplit]:
    """Split `dataset` among ``cfg.num_clients`` clients; deterministic in (dataset, cfg, seed).

    Train indices of different clients are always disjoint.  Each client's share is then divided
    into train/val (generator seeded with ``seed * 1000 + partition_id``, as in the papers' code)
    and given test indices according to ``cfg.test``.  Raises `ConfigError` (a `ValueError`) for invalid
    settings and when the data cannot satisfy them (too few shards, too few images, ...).

    With `cache`, the shares a flwr-datasets partitioner computed are kept on disk (see `_cached_shares`),
    so the other processes of a run (Ray's client actors) read them instead of importing flwr-datasets.
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
    elif cache:
        shares = _cached_shares(y_train, num_classes, cfg, seed, lambda: _flwr_shares(y_train, num_classes, cfg, rng))
    else:
        shares = _flwr_shares(y_train, num_classes, cfg, rng)

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

    Hand-written on purpose: flwr-datasets' ShardPartitioner (0.6.1) cuts the label-sorted data at multiples
    of `shard_size` from the start, so shards straddle class boundaries (on MNIST with shard_size 20, 8 of its
    3,000 shards hold two labels; benchmarks/partition_compare.py), and it has nothing like `unbalanced_rate`.
    It stays reachable as ``scheme: flwr, partitioner: ShardPartitioner``.
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


def _flwr_shares(y: np.ndarray, num_classes: int, cfg: PartitionConfig,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """The flwr-datasets schemes: check what the old code checked, build the partitioner, run it on the labels.

    The data set handed to the partitioner is ``{"label", "index"}`` in the order ``rng.permutation(n)``; the
    partitioner's own seed is the next draw from `rng`.  With IidPartitioner (contiguous, equal blocks of that
    order) ``iid`` gives exactly the partition the hand-written code gave for the same seed.
    """
    import datasets as hf  # flwr-datasets' data type; imported here so that `shards` runs never pay for it

    n, n_clients = len(y), cfg.num_clients
    scheme = cfg.scheme
    if scheme == "iid" and n < n_clients:
        raise ConfigError(f"partition: iid: {n} training images cannot give each of {n_clients} clients at least one")
    if scheme == "dirichlet" and n_clients * cfg.min_size > n:
        raise ConfigError(
            f"partition: dirichlet: {n_clients} clients x min_size {cfg.min_size} exceed the {n} training images")
    if scheme == "pathological":
        k, present = cfg.labels_per_client, len(np.unique(y))
        if k > num_classes:
            raise ConfigError(
                f"partition: pathological: labels_per_client={k} exceeds the {num_classes} classes of the data set")
        if k > present:
            raise ConfigError(f"partition: pathological: labels_per_client={k} but only {present} labels occur "
                              "in the training set")
    order = rng.permutation(n)  # first draw: the old `iid` permutation
    seed = int(rng.integers(2**32))
    partitioner = _build_partitioner(cfg, seed)
    name = type(partitioner).__name__
    table = hf.Dataset.from_dict({"label": y[order], "index": order.astype(np.int64)}).with_format("arrow")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            partitioner.dataset = table
            parts = _read_partitions(partitioner, n_clients)
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:
            raise ConfigError(_refusal(cfg, name, n, num_classes, exc)) from None
    _log_warnings(scheme, name, caught)
    used = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(np.unique(used)) != len(used):
        raise ConfigError(f"partition: {scheme}: {name} gave overlapping partitions; fedlottery needs each training "
                          "image on one client at most; choose another partitioner")
    if scheme == "flwr":
        empty = [i for i, p in enumerate(parts) if len(p) == 0]
        if empty:
            raise ConfigError(f"partition: flwr: {name} gave {len(empty)} of {n_clients} clients no training image "
                              f"(client {empty[0]} first); lower partition.num_clients or change partition.args")
    return parts


def _cached_shares(y: np.ndarray, num_classes: int, cfg: PartitionConfig, seed: int,
                   compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """`compute()`, kept in ``$FEDLOTTERY_CACHE/partitions/`` (default ``~/.cache/fedlottery``) between processes.

    Importing flwr-datasets costs every process about 2 s of CPU and 120 MiB of private memory (it imports
    datasets, pyarrow, pandas, matplotlib and seaborn; benchmarks/partition_compare.py), and in a simulation
    every client actor builds the partitions again.  The command line builds them before Ray starts, so the
    actors find them here.  The file name is a SHA-256 of everything the shares depend on: the training labels,
    the number of classes, the scheme's settings, the seed and the versions of flwr-datasets, datasets and
    numpy, and the source of this module and of fedlottery/data/flwr_partitioners.py (which builds the partitioner).  A file
    that does not match (damaged, foreign) is recomputed; a cache that cannot be written is only a warning.
    Files are a few hundred KiB (4 bytes per training image); delete them at any time.
    """
    from importlib import metadata

    import fedlottery.data.flwr_partitioners as flwr_partitioners_module
    from fedlottery.data.cache import cache_dir, write_npz_atomic

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "none"

    settings = {k: getattr(cfg, k) for k in ("scheme", "num_clients", "alpha", "min_size", "labels_per_client",
                                             "partitioner", "args")}
    material = json.dumps({"format": _PARTITION_CACHE_FORMAT, "settings": settings, "seed": seed,
                           "num_classes": num_classes, "n": len(y), "pathological_mode": PATHOLOGICAL_MODE,
                           "versions": [version(p) for p in ("flwr-datasets", "datasets", "numpy")]},
                          sort_keys=True, default=repr)
    digest = hashlib.sha256(material.encode())
    digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    for source in (__file__, flwr_partitioners_module.__file__):  # the code that seeds, builds and reads the partitioner
        digest.update(pathlib.Path(source).read_bytes())
    key = digest.hexdigest()
    path = cache_dir() / "partitions" / f"{cfg.scheme}-{cfg.num_clients}-{key[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_key, order, offsets = str(npz["key"]), npz["order"], npz["offsets"]
            ok = (stored_key == key and offsets.shape == (cfg.num_clients + 1,) and offsets[0] == 0
                  and np.all(np.diff(offsets) >= 0) and offsets[-1] == len(order)
                  and (len(order) == 0 or (order.min() >= 0 and order.max() < len(y)))
                  and len(np.unique(order)) == len(order))
            if ok:
                order = order.astype(np.int64)
                return [order[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            logger.warning("partition cache %s does not match; recomputing it", path)
        except Exception as exc:  # noqa: BLE001 - any damage to the cache means "compute again"
            logger.warning("partition cache %s is unreadable (%s); recomputing it", path, exc)
    shares = compute()
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in shares])]).astype(np.int64)
    order = np.concatenate(shares) if shares else np.empty(0, np.int64)
    write_npz_atomic(path, {"key": np.array(key), "order": order.astype(np.int32 if len(y) < 2**31 else np.int64),
                            "offsets": offsets})
    return shares


def _build_partitioner(cfg: PartitionConfig, seed: int) -> Any:
    """The flwr-datasets partitioner for `cfg` (already validated), seeded with `seed` where it takes one.

    dirichlet: ``self_balancing=False``, flwr-datasets' default and what the hand-written code did (no
    balancing); ``min_partition_size = min_size``.  ``shuffle=False`` everywhere: fedlottery sorts each
    client's indices anyway.
    """
    from flwr_datasets import partitioner as fp

    if cfg.scheme == "iid":
        return fp.IidPartitioner(num_partitions=cfg.num_clients)
    if cfg.scheme == "dirichlet":
        return fp.DirichletPartitioner(num_partitions=cfg.num_clients, partition_by="label", alpha=float(cfg.alpha),
                                       min_partition_size=int(cfg.min_size), self_balancing=False, shuffle=False,
                                       seed=seed)
    if cfg.scheme == "pathological":
        return fp.PathologicalPartitioner(num_partitions=cfg.num_clients, partition_by="label",
                                          num_classes_per_partition=int(cfg.labels_per_client),
                                          class_assignment_mode=PATHOLOGICAL_MODE, shuffle=False, seed=seed)
    return flwr_partitioner(cfg, seed=seed, path="partition")


def _read_partitions(partitioner: Any, n_clients: int) -> list[np.ndarray]:
    """Each partition's training-set indices (the "index" column of ``load_partition(i)``), int64.

    Every ``load_partition`` call is a ``datasets`` ``select``, which fingerprints its index list by pickling it
    element by element and builds a new ``Dataset`` (seconds for MNIST's 60,000 labels).  The partitioners that
    hold their whole assignment as positions in ``partitioner.dataset`` (``partition_id_to_indices``, public on
    some, private on the others in flwr-datasets 0.6.1) are read directly instead, after checking that this
    gives partition 0 exactly as ``load_partition(0)`` does; any other partitioner (IidPartitioner: about 1 ms
    of CPU a client) is read one ``load_partition`` at a time.
    """
    first = _index_column(partitioner.load_partition(0))  # also makes the partitioner decide every partition
    total = partitioner.num_partitions
    if total != n_clients:
        raise ValueError(f"it makes {total} partitions but partition.num_clients is {n_clients}")
    table = getattr(partitioner, "partition_id_to_indices", None)
    if not isinstance(table, dict):
        table = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(table, dict) and set(table) == set(range(n_clients)):
        index = partitioner.dataset[:]["index"].to_numpy()
        parts = [index[np.asarray(table[i], dtype=np.int64)] for i in range(n_clients)]
        if np.array_equal(parts[0], first):
            return parts
    return [first] + [_index_column(partitioner.load_partition(i)) for i in range(1, n_clients)]


def _index_column(part: Any) -> np.ndarray:
    """The "index" column of one partition (a ``datasets.Dataset`` in arrow format, as the table handed in)."""
    return np.asarray(part[:]["index"].to_numpy(), dtype=np.int64)


def _refusal(cfg: PartitionConfig, name: str, n: int, num_classes: int, exc: BaseException) -> str:
    """A ConfigError message for a partitioner that could not split this data set."""
    why = " ".join(str(exc).split())
    if cfg.scheme == "dirichlet" and "max number of attempts" in why:
        return (f"partition: dirichlet: after {FLWR_DIRICHLET_DRAWS} draws (flwr-datasets' DirichletPartitioner's "
                f"limit) some client still had fewer than min_size={cfg.min_size} images with alpha={cfg.alpha}, "
                f"{cfg.num_clients} clients; raise alpha, or lower num_clients or min_size")
    fix = {
        "iid": "lower num_clients",
        "dirichlet": "raise alpha, or lower num_clients or min_size",
        "pathological": "lower num_clients or labels_per_client",
        "flwr": "change partition.num_clients or partition.args",
    }[cfg.scheme]
    return (f"partition: {cfg.scheme}: flwr-datasets' {name} cannot split the {n} training images "
            f"({num_classes} classes) among {cfg.num_clients} clients: {why}; {fix}")


def _log_warnings(scheme: str, name: str, caught: list[warnings.WarningMessage]) -> None:
    """Pass a partitioner's warnings on to the log: redraws as one line, anything else once each."""
    redraws = sum("min_partition_size" in str(w.message) for w in caught)
    if redraws:
        logger.info("partition: %s: %s redrew %d time(s) for min_size", scheme, name, redraws)
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # pyarrow's and datasets' own notices
    for text in dict.fromkeys(" ".join(str(w.message).split()) for w in caught
                              if "min_partition_size" not in str(w.message) and not issubclass(w.category, quiet)):
        logger.warning("partition: %s: %s: %s", scheme, name, text)


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
