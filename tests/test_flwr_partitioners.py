"""Partitions from flwr-datasets: the schemes that run its partitioners, and the generic `flwr` scheme.

`iid`, `dirichlet` and `pathological` are flwr-datasets' IidPartitioner, DirichletPartitioner and
PathologicalPartitioner run on the labels in a seeded order; `scheme: flwr` runs any partitioner by class
name.  Small synthetic label sets only (partitioners look at labels, never at images): fast and offline.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import datasets as hf
import numpy as np
import pytest
import torch
from flwr_datasets import partitioner as fp

from fedlottery.config import ConfigError, FederatedConfig, from_dict
from fedlottery.data import ClientSplit, Dataset, PartitionConfig, make_partitions
from fedlottery.data import partitions as parts_module


def labels_dataset(n_train: int = 1200, n_test: int = 100, num_classes: int = 10, seed: int = 0) -> Dataset:
    """Random labels (every class present) with 1x2x2 dummy images."""
    g = torch.Generator().manual_seed(seed)
    y_train = torch.randint(num_classes, (n_train,), generator=g)
    y_train[:num_classes] = torch.arange(num_classes)
    y_test = torch.arange(n_test, dtype=torch.int64) % num_classes
    return Dataset("labels", torch.zeros(n_train, 1, 2, 2), y_train, torch.zeros(n_test, 1, 2, 2), y_test, num_classes)


DATA = labels_dataset()
N = len(DATA.y_train)


# The partition cache of this module's tests lives in a temporary directory, not in ~/.cache.
pytestmark = pytest.mark.usefixtures("module_cache_dir")


def shares(splits: list[ClientSplit]) -> list[np.ndarray]:
    return [np.sort(torch.cat([s.train, s.val]).numpy()) for s in splits]


def assert_disjoint(splits: list[ClientSplit]) -> np.ndarray:
    used = np.concatenate(shares(splits))
    assert len(np.unique(used)) == len(used) and used.min() >= 0 and used.max() < N
    return used


def same(a: list[ClientSplit], b: list[ClientSplit]) -> bool:
    return all(torch.equal(x.train, y.train) and torch.equal(x.val, y.val) for x, y in zip(a, b))


def flwr_cfg(partitioner: str, args: dict | None = None, num_clients: int = 8, **kw) -> PartitionConfig:
    return PartitionConfig(scheme="flwr", partitioner=partitioner, args=args or {}, num_clients=num_clients, **kw)


def reference(partitioner, y: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.random.Generator]:
    """What make_partitions documents: labels in the order rng.permutation(n), the partitioner's seed the next
    draw; partitions read through the public load_partition and its "index" column."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    order = rng.permutation(len(y))
    partitioner.dataset = hf.Dataset.from_dict({"label": y[order], "index": order})
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"])) for i in range(partitioner.num_partitions)], rng


# --------------------------------------------------------------------------------------------
# the moved schemes: really flwr-datasets, disjoint covers, seeded
# --------------------------------------------------------------------------------------------


def test_iid_is_the_old_partition_exactly():
    """IidPartitioner's contiguous equal blocks of the seeded order = the hand-written np.array_split."""
    for seed in (0, 7):
        splits = make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=7, val_fraction=0.0), seed=seed)
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
        old = [np.sort(p) for p in np.array_split(rng.permutation(N), 7)]
        assert all(np.array_equal(a, b) for a, b in zip(shares(splits), old))
        sizes = [s.train.numel() for s in splits]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == N


@pytest.mark.parametrize("scheme", ["dirichlet", "pathological"])
def test_schemes_are_flwr_datasets_partitioners(scheme):
    """The same partitions as building the flwr-datasets partitioner by hand with the documented settings."""
    y = DATA.y_train.numpy()
    cfg = PartitionConfig(scheme=scheme, num_clients=12, alpha=0.3, min_size=5, labels_per_client=3,
                          val_fraction=0.0)
    rng = np.random.default_rng(np.random.SeedSequence(3).spawn(2)[0])
    rng.permutation(N)
    seed = int(rng.integers(2**32))
    if scheme == "dirichlet":
        p = fp.DirichletPartitioner(num_partitions=12, partition_by="label", alpha=0.3, min_partition_size=5,
                                    self_balancing=False, seed=seed)
    else:
        p = fp.PathologicalPartitioner(num_partitions=12, partition_by="label", num_classes_per_partition=3,
                                       class_assignment_mode="first-deterministic", seed=seed)
    expected, _ = reference(p, y, 3)
    got = shares(make_partitions(DATA, cfg, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("cfg", [
    PartitionConfig(scheme="iid", num_clients=9),
    PartitionConfig(scheme="dirichlet", num_clients=9, alpha=0.5, min_size=10),
    PartitionConfig(scheme="dirichlet", num_clients=30, alpha=0.1, min_size=2),
    PartitionConfig(scheme="pathological", num_clients=10, labels_per_client=2),
    PartitionConfig(scheme="pathological", num_clients=25, labels_per_client=4),
], ids=lambda c: f"{c.scheme}-{c.num_clients}")
def test_disjoint_cover_seeded_and_sized(cfg):
    a, b, c = (make_partitions(DATA, cfg, seed=s) for s in (1, 1, 2))
    assert len(a) == cfg.num_clients
    assert len(assert_disjoint(a)) == N  # a cover: num_clients >= classes for pathological
    assert same(a, b) and not same(a, c)
    sizes = np.array([len(s) for s in shares(a)])
    y = DATA.y_train.numpy()
    if cfg.scheme == "dirichlet":
        assert sizes.min() >= cfg.min_size
    if cfg.scheme == "pathological":
        assert all(len(np.unique(y[s])) == cfg.labels_per_client for s in shares(a))
    for s in a:  # the per-client split is unchanged: round(val_fraction * n) held out
        n = s.train.numel() + s.val.numel()
        assert s.val.numel() == min(max(1, int(np.floor(0.1 * n + 0.5))), n - 1)


def test_changing_the_test_mode_never_moves_training_images():
    for scheme in ("iid", "dirichlet", "pathological"):
        a = make_partitions(DATA, PartitionConfig(scheme=scheme, num_clients=6, test="labels"), seed=4)
        b = make_partitions(DATA, PartitionConfig(scheme=scheme, num_clients=6, test="iid"), seed=4)
        assert same(a, b)


def test_dirichlet_partitioner_errors_are_config_errors():
    with pytest.raises(ConfigError, match=r"^partition: dirichlet: after 11 draws"):
        make_partitions(DATA, PartitionConfig(scheme="dirichlet", num_clients=100, alpha=0.001, min_size=5), seed=0)
    with pytest.raises(ConfigError, match=r"^partition: iid: 1200 training images cannot give"):
        make_partitions(DATA, PartitionConfig(scheme="iid", num_clients=1201), seed=0)


# --------------------------------------------------------------------------------------------
# reading partitions: the direct path gives what load_partition gives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda s: fp.DirichletPartitioner(num_partitions=10, partition_by="label", alpha=0.5, min_partition_size=0, seed=s),
    lambda s: fp.PathologicalPartitioner(num_partitions=10, partition_by="label", num_classes_per_partition=2, seed=s),
    lambda s: fp.ShardPartitioner(num_partitions=10, partition_by="label", shard_size=50, num_shards_per_partition=2,
                                  seed=s),  # sorts its data set: positions refer to the sorted order
    lambda s: fp.SizePartitioner(partition_sizes=[100] * 10),
    lambda s: fp.IidPartitioner(num_partitions=10),
], ids=["dirichlet", "pathological", "shard", "size", "iid"])
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # the partitioners' own notices
def test_read_partitions_matches_load_partition(make):
    y = DATA.y_train.numpy()
    expected, _ = reference(make(5), y, 0)
    order = np.random.default_rng(1).permutation(N)
    p = make(5)
    p.dataset = hf.Dataset.from_dict({"label": y[order], "index": order}).with_format("arrow")
    q = make(5)
    q.dataset = hf.Dataset.from_dict({"label": y[order], "index": order})
    slow = [np.asarray(q.load_partition(i)["index"]) for i in range(10)]
    fast = parts_module._read_partitions(p, 10)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))
    assert len(expected) == 10


# --------------------------------------------------------------------------------------------
# the partition cache: Ray's client actors read what the command line computed
# --------------------------------------------------------------------------------------------


def test_cache_is_read_back_and_checked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FEDLOTTERY_CACHE", str(tmp_path))
    cfg = PartitionConfig(scheme="dirichlet", num_clients=7, alpha=0.4)
    first = make_partitions(DATA, cfg, seed=2)
    files = list((tmp_path / "partitions").glob("dirichlet-7-*.npz"))
    assert len(files) == 1
    fresh = make_partitions(DATA, cfg, seed=2, cache=False)
    assert same(first, fresh)

    def no_partitioner(*args, **kwargs):
        raise AssertionError("computed again instead of read from the cache")

    with monkeypatch.context() as mp:
        mp.setattr(parts_module, "_flwr_shares", no_partitioner)
        again = make_partitions(DATA, cfg, seed=2)
        assert same(first, again)
        assert all(torch.equal(a.test, b.test) and a.labels == b.labels for a, b in zip(first, again))
        with pytest.raises(AssertionError, match="computed again"):  # another seed, another file
            make_partitions(DATA, cfg, seed=3)
        with pytest.raises(AssertionError, match="computed again"):  # other labels, another file
            make_partitions(labels_dataset(seed=1), cfg, seed=2)
    files[0].write_bytes(b"not an npz")
    with caplog.at_level("WARNING"):
        assert same(first, make_partitions(DATA, cfg, seed=2))
    assert "unreadable" in caplog.text


def test_cache_spares_client_processes_the_flwr_datasets_import(tmp_path, monkeypatch):
    """What the command line computed before Ray starts, a fresh process (a client actor) reads without
    importing flwr-datasets (seconds of CPU and ~120 MiB each)."""
    from fedlottery.data import load_dataset

    monkeypatch.setenv("FEDLOTTERY_CACHE", str(tmp_path))
    expected = make_partitions(load_dataset("digits"), PartitionConfig(scheme="pathological", num_clients=10), 0)
    script = textwrap.dedent("""\
        import sys
        from fedlottery.data import PartitionConfig, load_dataset, make_partitions
        splits = make_partitions(load_dataset("digits"), PartitionConfig(scheme="pathological", num_clients=10), 0)
        print("flwr_datasets" in sys.modules, "datasets" in sys.modules, [s.train.sum().item() for s in splits])
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.stdout.split(" ", 2)[:2] == ["False", "False"], run
    assert run.stdout.split(" ", 2)[2].strip() == str([s.train.sum().item() for s in expected])


# --------------------------------------------------------------------------------------------
# scheme: flwr, any partitioner by name
# --------------------------------------------------------------------------------------------


def test_flwr_linear_partitioner():
    """LinearPartitioner: client i gets a share proportional to i + 1, contents seeded by the experiment seed."""
    cfg = flwr_cfg("LinearPartitioner", num_clients=6, val_fraction=0.0)
    a, b, c = (make_partitions(DATA, cfg, seed=s) for s in (0, 0, 1))
    sizes = [len(s) for s in shares(a)]
    assert sizes == sorted(sizes) and sum(sizes) == N
    assert np.allclose(sizes, np.arange(1, 7) * N / 21, atol=6)
    assert len(assert_disjoint(a)) == N
    assert same(a, b) and not same(a, c)
    assert [len(s) for s in shares(c)] == sizes  # the sizes are the partitioner's, the contents the seed's


def test_flwr_size_and_exponential_partitioners():
    cfg = flwr_cfg("SizePartitioner", {"partition_sizes": [300, 200, 100, 50]}, num_clients=4)
    a = make_partitions(DATA, cfg, seed=0)
    assert [len(s) for s in shares(a)] == [300, 200, 100, 50]
    assert_disjoint(a)
    assert not same(a, make_partitions(DATA, cfg, seed=1))
    e = make_partitions(DATA, flwr_cfg("ExponentialPartitioner", num_clients=5), seed=0)
    sizes = [len(s) for s in shares(e)]
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[0] and sum(sizes) == N


def test_flwr_seeded_partitioner_gets_the_experiment_seed():
    cfg = flwr_cfg("ShardPartitioner", {"shard_size": 30, "num_shards_per_partition": 2}, num_clients=10)
    a, b, c = (make_partitions(DATA, cfg, seed=s) for s in (0, 0, 1))
    assert same(a, b) and not same(a, c)
    assert all(len(s) == 60 for s in shares(a))
    assert_disjoint(a)
    d = make_partitions(DATA, flwr_cfg("DirichletPartitioner", {"alpha": 0.5, "min_partition_size": 5},
                                       num_clients=10), seed=0)
    assert len(assert_disjoint(d)) == N


def test_flwr_scheme_from_yaml(tmp_path):
    from fedlottery.runtime.experiment import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent("""\
        seed: 3
        partition:
          scheme: flwr
          num_clients: 5
          partitioner: PathologicalPartitioner
          args: {num_classes_per_partition: 3, class_assignment_mode: deterministic}
        """))
    cfg = load_experiment(path)
    assert cfg.partition.args == {"num_classes_per_partition": 3, "class_assignment_mode": "deterministic"}
    splits = make_partitions(DATA, cfg.partition, cfg.seed)
    assert [s.labels for s in splits] == [(0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 6)]


@pytest.mark.parametrize("partition, pattern", [
    ({"partitioner": "NoSuchPartitioner"}, r"^partition\.partitioner: 'NoSuchPartitioner' is not a flwr-datasets "
                                           r"partitioner; choose one of .*LinearPartitioner"),
    ({}, r"^partition\.partitioner: scheme flwr needs the class name"),
    ({"partitioner": "Partitioner"}, r"^partition\.partitioner: 'Partitioner' is not"),
    ({"partitioner": "NaturalIdPartitioner"}, r"^partition\.partitioner: NaturalIdPartitioner needs a column of "
                                              r"client ids"),
    ({"partitioner": "VerticalEvenPartitioner"}, r"^partition\.partitioner: .* splits columns"),
    ({"partitioner": "IdToSizeFncPartitioner"}, r"^partition\.partitioner: .* Python function"),
    ({"partitioner": "LinearPartitioner", "args": {"slope": 2}}, r"^partition\.args\.slope: LinearPartitioner takes "
                                                                 r"no argument 'slope'"),
    ({"partitioner": "DirichletPartitioner", "args": {"alpha": 0.5, "seed": 1}}, r"^partition\.args\.seed: set by "
                                                                                 r"fedlottery"),
    ({"partitioner": "DirichletPartitioner", "args": {"alpha": 0.5, "num_partitions": 4}},
     r"^partition\.args\.num_partitions: set by fedlottery \(it is partition\.num_clients\)"),
    ({"partitioner": "ShardPartitioner", "args": {"partition_by": "image"}}, r"^partition\.args\.partition_by: set by"),
    ({"partitioner": "DirichletPartitioner"}, r"^partition\.args: DirichletPartitioner needs alpha"),
    ({"partitioner": "DirichletPartitioner", "args": {"alpha": -1.0}}, r"^partition\.args: DirichletPartitioner "
                                                                       r"refused .*greater than zero"),
    ({"partitioner": "ShardPartitioner", "args": {"shard_size": 2.5}}, r"^partition\.args: ShardPartitioner refused"),
    ({"partitioner": "SizePartitioner", "args": {"partition_sizes": [1, 2]}}, r"^partition\.args\.partition_sizes: 2 "
                                                                              r"sizes for 20 clients"),
    ({"partitioner": "LinearPartitioner", "args": [1]}, r"^partition\.args: expected a mapping"),
    ({"partitioner": 3}, r"^partition\.partitioner: expected a string"),
    ({"scheme": "iid", "partitioner": "LinearPartitioner"}, r"^partition\.partitioner: only used with scheme: flwr"),
    ({"scheme": "dirichlet", "args": {"alpha": 1}}, r"^partition\.args: only used with scheme: flwr"),
])
def test_flwr_bad_names_and_args_are_config_errors(partition, pattern):
    """Caught when the config is loaded (fedlottery.runtime.experiment), before any data is read or Ray started."""
    from fedlottery.runtime.experiment import experiment_from_dict

    section = {"scheme": "flwr", **partition}
    with pytest.raises(ConfigError, match=pattern):
        experiment_from_dict({"partition": section})


def test_flwr_errors_that_need_the_data_are_config_errors():
    too_many = flwr_cfg("ShardPartitioner", {"shard_size": 100, "num_shards_per_partition": 2}, num_clients=10)
    with pytest.raises(ConfigError, match=r"^partition: flwr: flwr-datasets' ShardPartitioner cannot split the 1200 "
                                          r"training images .*; change partition\.num_clients or partition\.args"):
        make_partitions(DATA, too_many, seed=0)
    sizes = flwr_cfg("SizePartitioner", {"partition_sizes": [1000, 300]}, num_clients=2)
    with pytest.raises(ConfigError, match=r"^partition: flwr: .*SizePartitioner"):
        make_partitions(DATA, sizes, seed=0)


def test_partition_config_types():
    """`args` is a plain mapping, kept as given; `partitioner` a string or null."""
    cfg = from_dict(FederatedConfig, {"clients_per_round": 3, "partition": {
        "scheme": "flwr", "partitioner": "SquarePartitioner", "num_clients": 3}})
    assert cfg.partition.args == {} and cfg.partition.partitioner == "SquarePartitioner"
    assert len(make_partitions(DATA, cfg.partition, seed=0)) == 3
