"""Tests for fedlottery.data.partitions on small synthetic label sets plus sklearn's digits.

Only labels matter to the partitioner, so the synthetic data sets use tiny 1x4x4 images; nothing
here reads ../shared/data.  `iid`, `dirichlet` and `pathological` run flwr-datasets' partitioners
(tests/test_flwr_partitioners.py covers that side and the generic `flwr` scheme); `shards` is fedlottery's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlottery.config import ConfigError
from fedlottery.data import ClientSplit, Dataset, PartitionConfig, describe, load_dataset, make_partitions


def synthetic(n_train: int = 1000, n_test: int = 200, num_classes: int = 10, seed: int = 0,
              balanced: bool = True) -> Dataset:
    """A random data set; balanced labels are a label-sorted-friendly 0..C-1 cycle, else random."""
    g = torch.Generator().manual_seed(seed)
    if balanced:
        y_train = torch.arange(n_train, dtype=torch.int64) % num_classes
        y_train = y_train[torch.randperm(n_train, generator=g)]
    else:
        y_train = torch.randint(num_classes, (n_train,), generator=g)
    y_test = torch.arange(n_test, dtype=torch.int64) % num_classes
    return Dataset(
        "synthetic",
        torch.randn(n_train, 1, 4, 4, generator=g),
        y_train,
        torch.randn(n_test, 1, 4, 4, generator=g),
        y_test,
        num_classes,
    )


DATA = synthetic()


# The partition cache of this module's tests lives in a temporary directory, not in ~/.cache.
pytestmark = pytest.mark.usefixtures("module_cache_dir")


def shares(splits: list[ClientSplit]) -> list[np.ndarray]:
    """Each client's whole training-set share (train and val)."""
    return [torch.cat([s.train, s.val]).numpy() for s in splits]


def assert_disjoint(splits: list[ClientSplit], n_train: int) -> np.ndarray:
    """Clients never share a training image; returns all used indices."""
    used = np.concatenate(shares(splits)) if splits else np.empty(0, np.int64)
    assert len(np.unique(used)) == len(used)
    assert used.size == 0 or (used.min() >= 0 and used.max() < n_train)
    return used


def assert_well_formed(splits: list[ClientSplit], data: Dataset) -> None:
    """Types, ids, val/train disjointness and `labels` agree with the data."""
    y = data.y_train.numpy()
    for pid, s in enumerate(splits):
        assert s.partition_id == pid
        for t in (s.train, s.val, s.test):
            assert t.dtype == torch.int64 and t.dim() == 1
        assert not set(s.train.tolist()) & set(s.val.tolist())
        assert s.labels == tuple(sorted(set(y[np.concatenate([s.train.numpy(), s.val.numpy()])].tolist())))
        if s.test.numel():
            assert int(s.test.min()) >= 0 and int(s.test.max()) < len(data.y_test)


# --------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------


def test_shards_balanced_sizes_and_single_label_shards() -> None:
    cfg = PartitionConfig(scheme="shards", num_clients=20, shard_size=25, shards_per_client=2, val_fraction=0.0)
    splits = make_partitions(DATA, cfg, seed=1)
    assert_well_formed(splits, DATA)
    assert_disjoint(splits, 1000)
    y = DATA.y_train.numpy()
    for s in splits:
        assert s.train.numel() == 50 and s.val.numel() == 0
        # Rebuild the client's shards: consecutive runs in label-sorted order are 25 images each.
        idx = np.sort(s.train.numpy())
        labels = y[idx]
        for lab in np.unique(labels):
            assert (labels == lab).sum() in (25, 50)  # one or two shards of this label
        assert 1 <= len(s.labels) <= 2


def test_shards_are_runs_of_label_sorted_order() -> None:
    """Each shard is a consecutive block of the stable label-sorted order, inside one class."""
    cfg = PartitionConfig(scheme="shards", num_clients=10, shard_size=20, shards_per_client=3, val_fraction=0.0)
    splits = make_partitions(DATA, cfg, seed=5)
    y = DATA.y_train.numpy()
    order = np.argsort(y, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    for s in splits:
        pos = np.sort(position[s.train.numpy()])
        runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
        lengths = sorted(len(r) for r in runs)
        # Adjacent shards may merge into one run; every run is a multiple of the shard size and
        # starts on a shard boundary within its class (each class here has 100 = 5 shards).
        assert sum(lengths) == 60 and all(n % 20 == 0 for n in lengths)
        for r in runs:
            assert r[0] % 20 == 0
    for s in splits:
        per_label = np.bincount(y[s.train.numpy()], minlength=10)
        assert all(c % 20 == 0 for c in per_label)


def test_shards_unbalanced_truncates_all_but_first() -> None:
    cfg = PartitionConfig(scheme="shards", num_clients=10, shard_size=20, shards_per_client=4,
                          unbalanced_rate=0.33, val_fraction=0.0)
    splits = make_partitions(DATA, cfg, seed=2)
    assert_disjoint(splits, 1000)
    expected = 20 + 3 * math.ceil(0.33 * 20)
    assert all(s.train.numel() == expected for s in splits)


def test_shards_too_few_raises_with_numbers() -> None:
    cfg = PartitionConfig(scheme="shards", num_clients=30, shard_size=20, shards_per_client=2)
    with pytest.raises(ValueError, match=r"60 shards.*only 50"):
        make_partitions(DATA, cfg, seed=0)


def test_shards_drop_class_remainders() -> None:
    """Classes of 103 images give 5 shards of 20 each; the 3 leftovers are never used."""
    y = torch.arange(10, dtype=torch.int64).repeat_interleave(103)
    data = Dataset("odd", torch.zeros(len(y), 1, 2, 2), y, torch.zeros(10, 1, 2, 2), torch.arange(10), 10)
    splits = make_partitions(data, PartitionConfig(num_clients=25, shard_size=20, shards_per_client=2), seed=0)
    used = assert_disjoint(splits, len(y))
    assert len(used) == 1000
    assert all(len(np.unique(y.numpy()[u])) >= 1 and np.all(np.bincount(y.numpy()[u]) % 20 == 0) for u in shares(splits))


# --------------------------------------------------------------------------------------------
# dirichlet
# --------------------------------------------------------------------------------------------


def test_dirichlet_covers_everything_and_respects_min_size() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_clients=15, alpha=0.5, min_size=10)
    splits = make_partitions(DATA, cfg, seed=3)
    assert_well_formed(splits, DATA)
    used = assert_disjoint(splits, 1000)
    assert len(used) == 1000
    assert all(s.train.numel() + s.val.numel() >= 10 for s in splits)


def _label_counts(splits: list[ClientSplit], data: Dataset) -> np.ndarray:
    y = data.y_train.numpy()
    return np.stack([np.bincount(y[u], minlength=data.num_classes) for u in shares(splits)])


def test_dirichlet_tiny_alpha_is_skewed() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_clients=5, alpha=0.01, min_size=0)
    counts = _label_counts(make_partitions(DATA, cfg, seed=4), DATA)
    # Nearly every class goes (almost) entirely to one client.
    dominant = counts.max(axis=0) / counts.sum(axis=0)
    assert np.median(dominant) > 0.9


def test_dirichlet_huge_alpha_is_near_uniform() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_clients=5, alpha=1e5)
    counts = _label_counts(make_partitions(DATA, cfg, seed=4), DATA)
    assert np.all(np.abs(counts - 20) <= 3)  # 100 images per class, 5 clients


def test_dirichlet_impossible_min_size_raises() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_clients=50, alpha=0.001, min_size=2)
    with pytest.raises(ConfigError, match=r"^partition: dirichlet: after 11 draws .*min_size=2"):
        make_partitions(DATA, cfg, seed=0)
    with pytest.raises(ValueError, match="exceed"):
        make_partitions(DATA, PartitionConfig(scheme="dirichlet", num_clients=600, min_size=2), seed=0)


def test_impossible_partitions_are_config_errors() -> None:
    """Data that cannot satisfy the partition settings is the user's to fix: a ConfigError (a ValueError)."""
    with pytest.raises(ConfigError, match=r"^partition: dirichlet: .*exceed"):
        make_partitions(DATA, PartitionConfig(scheme="dirichlet", num_clients=600, min_size=2), seed=0)
    with pytest.raises(ConfigError, match=r"^partition: shards: .*lower num_clients"):
        make_partitions(DATA, PartitionConfig(scheme="shards", num_clients=500, shard_size=20), seed=0)


def test_partition_config_lives_in_the_config_module() -> None:
    import fedlottery.config
    import fedlottery.data.partitions

    assert PartitionConfig is fedlottery.config.PartitionConfig is fedlottery.data.partitions.PartitionConfig


# --------------------------------------------------------------------------------------------
# pathological and iid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_pathological_exactly_k_labels(k: int) -> None:
    cfg = PartitionConfig(scheme="pathological", num_clients=20, labels_per_client=k)
    splits = make_partitions(DATA, cfg, seed=6)
    assert_well_formed(splits, DATA)
    used = assert_disjoint(splits, 1000)
    assert all(len(s.labels) == k for s in splits)
    assert len(used) == 1000  # 20 clients >= 10 classes: every label is some client's first label
    # PathologicalPartitioner's "first-deterministic" mode: client i's labels include i % 10; the other
    # k - 1 are drawn at random, so holder counts are at least 2 but no longer equal (as they were before).
    holders = np.bincount(np.concatenate([s.labels for s in splits]), minlength=10)
    assert np.all(holders >= 2) and holders.sum() == 20 * k
    assert all(i % 10 in s.labels for i, s in enumerate(splits))
    # Within a label, holders' counts differ by at most one.
    counts = _label_counts(splits, DATA)
    for c in range(10):
        held = counts[:, c][counts[:, c] > 0]
        assert held.max() - held.min() <= 1


def test_pathological_errors() -> None:
    with pytest.raises(ValueError, match="exceeds the 10 classes"):
        make_partitions(DATA, PartitionConfig(scheme="pathological", labels_per_client=11), seed=0)
    with pytest.raises(ConfigError, match=r"^partition: pathological: .*PathologicalPartitioner cannot split .*"
                                          r"lower num_clients or labels_per_client"):
        make_partitions(DATA, PartitionConfig(scheme="pathological", num_clients=400, labels_per_client=5), seed=0)


def test_iid_sizes_differ_by_at_most_one() -> None:
    cfg = PartitionConfig(scheme="iid", num_clients=7, val_fraction=0.0)
    splits = make_partitions(DATA, cfg, seed=7)
    sizes = [s.train.numel() for s in splits]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000
    assert len(assert_disjoint(splits, 1000)) == 1000


# --------------------------------------------------------------------------------------------
# validation and test parts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5])
def test_val_split_sizes(fraction: float) -> None:
    cfg = PartitionConfig(scheme="iid", num_clients=10, val_fraction=fraction)
    for s in make_partitions(DATA, cfg, seed=8):
        assert s.val.numel() == round(fraction * 100)
        assert s.train.numel() + s.val.numel() == 100


def test_val_at_least_one_and_never_everything() -> None:
    """Tiny clients: 2 images -> 1 val; 1 image -> no val; fraction 0 -> no val."""
    for n_train, expected in ((40, 1), (20, 0)):
        data = synthetic(n_train=n_train)
        splits = make_partitions(data, PartitionConfig(scheme="iid", num_clients=20, val_fraction=0.01), seed=0)
        assert all(s.val.numel() == expected and s.train.numel() >= 1 for s in splits)


def test_val_seeded_per_client() -> None:
    """The val draw depends only on (seed, partition_id) and the client's share."""
    a = make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=4, test="labels"), seed=9)
    b = make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=4, test="iid"), seed=9)
    for x, y in zip(a, b):
        assert torch.equal(x.val, y.val) and torch.equal(x.train, y.train)


def test_test_labels_gives_all_test_images_of_client_labels() -> None:
    cfg = PartitionConfig(scheme="pathological", num_clients=10, labels_per_client=2, test="labels")
    y_test = DATA.y_test.numpy()
    for s in make_partitions(DATA, cfg, seed=10):
        expected = np.flatnonzero(np.isin(y_test, s.labels))
        assert np.array_equal(s.test.numpy(), expected)


def test_test_iid_and_global() -> None:
    splits = make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=6, test="iid"), seed=11)
    parts = [s.test.numpy() for s in splits]
    allp = np.concatenate(parts)
    assert len(allp) == 200 and len(np.unique(allp)) == 200
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    splits = make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=6, test="global"), seed=11)
    assert all(torch.equal(s.test, torch.arange(200)) for s in splits)
    with pytest.raises(ValueError, match="test images"):
        make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=300, test="iid"), seed=0)


# --------------------------------------------------------------------------------------------
# determinism, config validation, describe
# --------------------------------------------------------------------------------------------


SCHEME_CFGS = {
    "shards": PartitionConfig(scheme="shards", num_clients=10, shard_size=20),
    "dirichlet": PartitionConfig(scheme="dirichlet", num_clients=10),
    "pathological": PartitionConfig(scheme="pathological", num_clients=10),
    "iid": PartitionConfig(scheme="iid", num_clients=10, test="iid"),
}


@pytest.mark.parametrize("scheme", list(SCHEME_CFGS))
def test_deterministic_and_seed_sensitive(scheme: str) -> None:
    cfg = SCHEME_CFGS[scheme]
    a, b, c = (make_partitions(DATA, cfg, seed=s) for s in (12, 12, 13))
    for x, y in zip(a, b):
        assert torch.equal(x.train, y.train) and torch.equal(x.val, y.val) and torch.equal(x.test, y.test)
        assert x.labels == y.labels
    assert any(not torch.equal(x.train, y.train) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"num_clients": 0}, "num_clients"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"shard_size": 0}, "shard_size"),
        ({"shards_per_client": 0}, "shards_per_client"),
        ({"unbalanced_rate": 0.0}, "unbalanced_rate"),
        ({"unbalanced_rate": 1.5}, "unbalanced_rate"),
        ({"labels_per_client": 0}, "labels_per_client"),
        ({"min_size": -1}, "min_size"),
        ({"scheme": "bogus"}, "scheme"),
        ({"test": "bogus"}, "test"),
        ({"num_clients": 2.5}, "num_clients"),
        ({"alpha": float("nan")}, "alpha"),
    ],
)
def test_config_errors_name_the_key(changes: dict, key: str) -> None:
    cfg = PartitionConfig(**changes)
    with pytest.raises(ConfigError, match=rf"^fl\.partition\.{key}: "):
        cfg.validate("fl.partition")
    with pytest.raises(ConfigError, match=rf"^partition\.{key}: "):
        make_partitions(DATA, cfg, seed=0)


def test_defaults_validate_and_negative_seed_rejected() -> None:
    PartitionConfig().validate("partition")
    with pytest.raises(ValueError, match="seed"):
        make_partitions(DATA, PartitionConfig(), seed=-1)


def test_describe() -> None:
    splits = make_partitions(DATA, PartitionConfig(scheme="pathological", num_clients=10, val_fraction=0.0), seed=0)
    d = describe(splits)
    assert d["num_clients"] == 10
    assert d["train_size"]["mean"] == 100.0
    assert d["labels_per_client"] == {"min": 2, "mean": 2.0, "max": 2}
    assert d["total_train"] == 1000
    assert describe([])["num_clients"] == 0


# --------------------------------------------------------------------------------------------
# property test and real data
# --------------------------------------------------------------------------------------------


UNBALANCED = synthetic(n_train=600, n_test=50, num_classes=10, seed=1, balanced=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_clients=st.integers(1, 30),
    scheme=st.sampled_from(["shards", "dirichlet", "pathological", "iid"]),
    seed=st.integers(0, 10_000),
    val_fraction=st.sampled_from([0.0, 0.1, 0.3]),
    test=st.sampled_from(["labels", "iid", "global"]),
)
def test_property_disjoint_and_coverage(num_clients: int, scheme: str, seed: int, val_fraction: float, test: str) -> None:
    cfg = PartitionConfig(scheme=scheme, num_clients=num_clients, shard_size=8, shards_per_client=2,
                          alpha=1.0, labels_per_client=2, val_fraction=val_fraction, test=test, min_size=1)
    splits = make_partitions(UNBALANCED, cfg, seed=seed)
    assert len(splits) == num_clients
    assert_well_formed(splits, UNBALANCED)
    used = assert_disjoint(splits, 600)
    if scheme in ("dirichlet", "iid") or (scheme == "pathological" and num_clients >= 10):
        assert len(used) == 600  # these schemes hand out every training image (pathological: once every
        # label is some client's first label)
    if scheme == "shards":
        assert all(s.train.numel() + s.val.numel() == 16 for s in splits)
    if test == "iid":
        assert len(np.unique(np.concatenate([s.test.numpy() for s in splits]))) == 50


def test_real_digits() -> None:
    data = load_dataset("digits")
    cfg = PartitionConfig(scheme="shards", num_clients=20, shard_size=20, shards_per_client=2)
    splits = make_partitions(data, cfg, seed=0)
    assert_well_formed(splits, data)
    assert_disjoint(splits, len(data.y_train))
    y_test = data.y_test.numpy()
    for s in splits:
        assert s.train.numel() == 36 and s.val.numel() == 4
        assert np.array_equal(s.test.numpy(), np.flatnonzero(np.isin(y_test, s.labels)))
    d = describe(make_partitions(data, PartitionConfig(scheme="dirichlet", num_clients=10, alpha=0.3), seed=1))
    assert d["total_train"] + d["total_val"] == len(data.y_train)


def test_matched_test_sets_follow_each_clients_label_mix():
    import numpy as np

    from fedlottery.data import load_dataset, make_partitions
    from fedlottery.data.partitions import PartitionConfig

    dataset = load_dataset("digits")
    cfg = PartitionConfig(scheme="dirichlet", alpha=0.3, num_clients=5, test="matched")
    splits = make_partitions(dataset, cfg, seed=0)
    y_train, y_test = dataset.y_train.numpy(), dataset.y_test.numpy()
    for split in splits:
        own = np.bincount(y_train[np.concatenate([split.train.numpy(), split.val.numpy()])], minlength=10)
        test = np.bincount(y_test[split.test.numpy()], minlength=10)
        assert test.sum() <= len(y_test) // 5
        assert set(np.flatnonzero(test)) <= set(np.flatnonzero(own))
        big = int(np.argmax(own))
        assert test[big] == test.max() or test[big] >= 0.8 * test.max()  # capped only by the label's pool
