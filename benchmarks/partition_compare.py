"""Before / after: fedlottery's hand-written partitions against the flwr-datasets partitioners that replaced them.

    nice -n 10 .venv/bin/python benchmarks/partition_compare.py [--seeds 20] [--confirm-seeds 200] [--cifar10]

`iid`, `dirichlet` and `pathological` now run flwr-datasets' IidPartitioner, DirichletPartitioner and
PathologicalPartitioner (fedlottery.data.partitions), so which images each client holds changed for a given
seed.  This script shows whether the partitions still *match in distribution*: for real MNIST training labels
(``load_dataset("mnist", None)``) and each setting, over --seeds seeds,

  BEFORE  the hand-written functions as they were in fedlottery up to commit c3f538a (copied below verbatim,
          `old_*`), fed the same seed stream make_partitions used then;
  AFTER   fedlottery.data.make_partitions as it is now.

Per partition: client sizes (min / mean / max / std over clients), labels per client (mean, min-max), clients
per label (min-max), and the mean total-variation distance of each client's label histogram from the global
one, TV_k = 1/2 sum_c |p_k(c) - p(c)|.  Each is averaged over the seeds (± the std over seeds).  Verdict:
"match in distribution" when every statistic's before/after difference is under 3 standard errors (or both are
constant and equal); a statistic beyond that (80 comparisons are made, so one can be chance) is checked again
on --confirm-seeds fresh seeds and called a difference only if it holds there.  CPU ms: the median CPU time of
one call.

Also: `shards`, which stayed hand-written, against flwr-datasets' ShardPartitioner at LotteryFL's MNIST setting
(400 clients x 2 shards of 20): how many shards hold two labels.  Writes benchmarks/results/partition_compare.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedlottery.config import PartitionConfig  # noqa: E402
from fedlottery.data import load_dataset, make_partitions  # noqa: E402
from fedlottery.errors import ConfigError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ============================================================================================
# BEFORE: fedlottery's hand-written partition functions up to commit c3f538a, verbatim
# (fedlottery/data/partitions.py: _dirichlet, _pathological, _iid; MAX_DIRICHLET_DRAWS = 100).
# ============================================================================================

MAX_DIRICHLET_DRAWS = 100


def old_dirichlet(y: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
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


def old_pathological(y: np.ndarray, num_classes: int, cfg: PartitionConfig,
                     rng: np.random.Generator) -> list[np.ndarray]:
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


def old_iid(n: int, n_clients: int, rng: np.random.Generator, what: str) -> list[np.ndarray]:
    """Seeded shuffle split into `n_clients` parts whose sizes differ by at most one."""
    if n < n_clients:
        raise ConfigError(f"partition: iid: {n} {what} cannot give each of {n_clients} clients at least one")
    return [p.astype(np.int64) for p in np.array_split(rng.permutation(n), n_clients)]


def old_partition(y: np.ndarray, num_classes: int, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    """The old make_partitions' train shares: the same SeedSequence stream, then the old scheme function."""
    part_seq, _ = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(part_seq)
    if cfg.scheme == "dirichlet":
        return old_dirichlet(y, num_classes, cfg, rng)
    if cfg.scheme == "pathological":
        return old_pathological(y, num_classes, cfg, rng)
    return old_iid(len(y), cfg.num_clients, rng, what="training images")


# ============================================================================================
# AFTER: fedlottery.data.make_partitions (flwr-datasets partitioners)
# ============================================================================================


def new_partition(dataset, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    """The shares make_partitions computes now (cache=False: always through flwr-datasets, never from disk)."""
    splits = make_partitions(dataset, replace(cfg, val_fraction=0.0, test="global"), seed, cache=False)
    return [np.sort(s.train.numpy()) for s in splits]


# ============================================================================================
# statistics
# ============================================================================================

STATS = ("size_min", "size_mean", "size_max", "size_std", "labels_mean", "labels_min", "labels_max",
         "holders_min", "holders_max", "tv_mean")


def partition_stats(y: np.ndarray, num_classes: int, shares: list[np.ndarray]) -> dict[str, float]:
    sizes = np.array([len(s) for s in shares], dtype=np.float64)
    counts = np.stack([np.bincount(y[s], minlength=num_classes) for s in shares]).astype(np.float64)
    glob = np.bincount(y, minlength=num_classes) / len(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        hist = counts / counts.sum(axis=1, keepdims=True)
    tv = 0.5 * np.abs(hist - glob).sum(axis=1)
    held = counts > 0
    labels = held.sum(axis=1)
    holders = held.sum(axis=0)
    values = {
        "size_min": sizes.min(), "size_mean": sizes.mean(), "size_max": sizes.max(), "size_std": sizes.std(),
        "labels_mean": labels.mean(), "labels_min": labels.min(), "labels_max": labels.max(),
        "holders_min": holders.min(), "holders_max": holders.max(), "tv_mean": np.nanmean(tv),
    }
    return {k: float(v) for k, v in values.items()}


@dataclass
class Summary:
    mean: dict[str, float]
    sd: dict[str, float]
    cpu_ms: float


def summarise(rows: list[dict[str, float]], times: list[float]) -> Summary:
    mean = {k: statistics.fmean(r[k] for r in rows) for k in STATS}
    sd = {k: statistics.pstdev([r[k] for r in rows]) if len(rows) > 1 else 0.0 for k in STATS}
    return Summary(mean, sd, 1000 * statistics.median(times))


def differing(before: Summary, after: Summary, n: int, stats=STATS) -> dict[str, float]:
    """The statistics whose before/after means differ by more than 3 standard errors, with their z."""
    out = {}
    for k in stats:
        a, b = before.mean[k], after.mean[k]
        se = ((before.sd[k] ** 2 + after.sd[k] ** 2) / n) ** 0.5
        if (se == 0 and not np.isclose(a, b)) or (se > 0 and abs(a - b) > 3 * se):
            out[k] = float("inf") if se == 0 else (b - a) / se
    return out


def run_setting(dataset, cfg: PartitionConfig, seeds: list[int]) -> tuple[Summary, Summary, bool]:
    y = dataset.y_train.numpy().astype(np.int64)
    before_rows, after_rows, tb, ta = [], [], [], []
    identical = True
    for seed in seeds:
        old, t_old = timed(lambda: old_partition(y, dataset.num_classes, cfg, seed))
        new, t_new = timed(lambda: new_partition(dataset, cfg, seed))
        tb.append(t_old)
        ta.append(t_new)
        before_rows.append(partition_stats(y, dataset.num_classes, old))
        after_rows.append(partition_stats(y, dataset.num_classes, new))
        identical &= all(np.array_equal(np.sort(a), b) for a, b in zip(old, new))
    return summarise(before_rows, tb), summarise(after_rows, ta), identical


def zs(found: dict[str, float]) -> str:
    return ", ".join(f"{k} (z = {z:+.1f})" if np.isfinite(z) else k for k, z in found.items())


def fmt(s: Summary, k: str, digits: int = 1) -> str:
    m, d = s.mean[k], s.sd[k]
    return f"{m:,.{digits}f}" + (f" ± {d:,.{digits}f}" if d > 0 else "")


def timed(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


# ============================================================================================
# shards: hand-written (kept) vs flwr-datasets' ShardPartitioner
# ============================================================================================


def shard_compare(dataset, seeds: list[int]) -> list[str]:
    from fedlottery.data.partitions import _shards  # the kept hand-written scheme

    y = dataset.y_train.numpy().astype(np.int64)
    cfg = PartitionConfig(scheme="shards", num_clients=400, shard_size=20, shards_per_client=2)
    sorted_labels = np.sort(y, kind="stable")
    all_flwr_shards = sorted_labels[: len(y) // 20 * 20].reshape(-1, 20)
    mixed_flwr = int(sum(len(np.unique(s)) > 1 for s in all_flwr_shards))
    counts = np.bincount(y)
    own_total = int((counts // 20).sum())
    rows = {"hand-written (kept)": [], "flwr ShardPartitioner": []}
    for seed in seeds:
        part_seq, _ = np.random.SeedSequence(seed).spawn(2)
        own = _shards(y, cfg, np.random.default_rng(part_seq))
        flwr = new_partition(dataset, PartitionConfig(
            scheme="flwr", num_clients=400, partitioner="ShardPartitioner",
            args={"shard_size": 20, "num_shards_per_partition": 2}), seed)
        for name, shares in (("hand-written (kept)", own), ("flwr ShardPartitioner", flwr)):
            labels = np.array([len(np.unique(y[s])) for s in shares])
            rows[name].append((labels.mean(), int((labels > 2).sum()), len(shares[0])))
    out = [
        "## `shards` stays hand-written: LotteryFL's setting against flwr-datasets' ShardPartitioner",
        "",
        f"MNIST, 400 clients x 2 shards of 20 images (configs/lotteryfl_mnist.yaml), {len(seeds)} seeds. "
        f"ShardPartitioner(shard_size=20, num_shards_per_partition=2) cuts the label-sorted 60,000 images into "
        f"{len(all_flwr_shards):,} shards from the start, across class boundaries: **{mixed_flwr} of them hold two "
        f"labels**. fedlottery's `shards` cuts each class afresh ({own_total:,} one-label shards; a class's last "
        f"count % 20 images are unused) and has `unbalanced_rate`, which ShardPartitioner has no counterpart for.",
        "",
        "| partitioner | labels per client (mean) | clients holding > 2 labels (mean per partition) | "
        "images per client |",
        "|---|---:|---:|---:|",
    ]
    for name, r in rows.items():
        out.append(f"| {name} | {statistics.fmean(x[0] for x in r):.3f} | {statistics.fmean(x[1] for x in r):.2f} | "
                   f"{r[0][2]} |")
    return out


# ============================================================================================
# per-process cost: importing flwr-datasets, against reading the partition cache
# ============================================================================================

_PROCESS_COST = """
import json, sys, time
import torch, flwr  # what a client actor has loaded anyway

def memory():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if parts[0] in ("Rss:", "Private_Dirty:", "Private_Clean:"):
            out[parts[0]] = int(parts[1]) / 1024
    return out

from fedlottery.data import PartitionConfig, load_dataset, make_partitions
dataset = load_dataset("mnist", None)
before, t = memory(), time.process_time()
if sys.argv[1] == "import":
    import flwr_datasets.partitioner
else:
    make_partitions(dataset, PartitionConfig(scheme="dirichlet", num_clients=100, alpha=0.5), 0)
cpu, after = time.process_time() - t, memory()
print(json.dumps({"cpu_s": cpu, "rss_mib": after["Rss:"] - before["Rss:"],
                  "private_mib": after["Private_Dirty:"] + after["Private_Clean:"] - before["Private_Dirty:"]
                  - before["Private_Clean:"], "imported": "flwr_datasets" in sys.modules}))
"""


def process_cost(repeats: int = 3) -> list[str]:
    """Fresh processes, as a Ray client actor: `import flwr_datasets.partitioner`, then a make_partitions that
    finds its shares in the cache (written here first); medians of `repeats` processes each."""
    import json
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FEDLOTTERY_CACHE": cache}

        def run(mode: str) -> dict:
            out = subprocess.run([sys.executable, "-c", _PROCESS_COST, mode], env=env, check=True,
                                 capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
            return json.loads(out)

        run("write")  # what the command line does before Ray starts: compute, and fill the cache
        rows = {}
        for mode in ("import", "cache"):
            runs = [run(mode) for _ in range(repeats)]
            rows[mode] = {k: statistics.median(r[k] for r in runs) for k in ("cpu_s", "rss_mib", "private_mib")}
            rows[mode]["imported"] = any(r["imported"] for r in runs)
    return [
        "## Per process: importing flwr-datasets, or reading the partition cache",
        "",
        f"Fresh Python processes with torch and flwr loaded (as a Ray client actor), medians of {repeats}: the "
        "import `flwr_datasets.partitioner` (it pulls in datasets, pyarrow, pandas, scipy, matplotlib and seaborn), "
        "against `make_partitions` for Dirichlet(0.5) over 100 MNIST clients when the command line has already "
        "written the shares to the partition cache (`$FEDLOTTERY_CACHE/partitions/`).",
        "",
        "| in a fresh process | CPU s | RSS + MiB | private + MiB | flwr_datasets imported |",
        "|---|---:|---:|---:|---|",
        f"| import flwr_datasets.partitioner | {rows['import']['cpu_s']:.2f} | {rows['import']['rss_mib']:.0f} | "
        f"{rows['import']['private_mib']:.0f} | yes |",
        f"| make_partitions, cache hit | {rows['cache']['cpu_s']:.2f} | {rows['cache']['rss_mib']:.0f} | "
        f"{rows['cache']['private_mib']:.0f} | {'yes' if rows['cache']['imported'] else 'no'} |",
    ]


# ============================================================================================
# main
# ============================================================================================


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--cifar10", action="store_true", help="also compare_cifar10.yaml's setting on CIFAR-10 labels")
    ap.add_argument("--confirm-seeds", type=int, default=200,
                    help="fresh seeds on which a difference found with --seeds is checked again")
    ap.add_argument("--out", default=str(RESULTS / "partition_compare.md"))
    args = ap.parse_args()
    seeds = list(range(args.seeds))
    wall = time.time()

    mnist = load_dataset("mnist", None)
    settings = [
        ("mnist", PartitionConfig(scheme="iid", num_clients=100)),
        ("mnist", PartitionConfig(scheme="dirichlet", num_clients=100, alpha=0.1)),
        ("mnist", PartitionConfig(scheme="dirichlet", num_clients=100, alpha=0.5)),
        ("mnist", PartitionConfig(scheme="dirichlet", num_clients=20, alpha=0.5)),
        ("mnist", PartitionConfig(scheme="pathological", num_clients=100, labels_per_client=2)),
        ("mnist", PartitionConfig(scheme="pathological", num_clients=20, labels_per_client=2)),
        ("mnist", PartitionConfig(scheme="pathological", num_clients=20, labels_per_client=5)),
    ]
    data = {"mnist": mnist}
    if args.cifar10:
        data["cifar10"] = load_dataset("cifar10", None)
        settings.append(("cifar10", PartitionConfig(scheme="dirichlet", num_clients=20, alpha=0.5)))
    make_partitions(mnist, PartitionConfig(scheme="iid", num_clients=2), 0)  # imports flwr-datasets once, untimed

    def label(cfg: PartitionConfig) -> str:
        extra = {"iid": "", "dirichlet": f", alpha {cfg.alpha}, min_size {cfg.min_size}",
                 "pathological": f", {cfg.labels_per_client} labels"}[cfg.scheme]
        return f"{cfg.scheme}{extra}, {cfg.num_clients} clients"

    table = ["| data | setting | version | client size min | mean | max | std | labels / client (min–max) | "
             "clients / label (min–max) | mean TV from global | CPU ms | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    identical_notes = []
    fresh = list(range(1000, 1000 + args.confirm_seeds))
    for name, cfg in settings:
        dataset = data[name]
        before, after, identical = run_setting(dataset, cfg, seeds)
        found = {} if identical else differing(before, after, len(seeds))
        if identical:
            v = "identical partitions (every seed)"
        elif not found:
            v = "match in distribution"
        else:  # a difference at --seeds seeds (80 tests run: one can be chance): check it on fresh seeds
            b2, a2, _ = run_setting(dataset, cfg, fresh)
            confirmed = differing(b2, a2, len(fresh), stats=tuple(found))
            if confirmed:
                v = f"**differ**: {zs(confirmed)} (confirmed on {len(fresh)} fresh seeds)"
            else:
                v = (f"match in distribution ({zs(found)} at {len(seeds)} seeds, not confirmed on {len(fresh)} "
                     "fresh seeds)")
        if identical:
            identical_notes.append(label(cfg))
        for tag, s in (("before (hand-written)", before), ("after (flwr-datasets)", after)):
            table.append(
                f"| {name} | {label(cfg)} | {tag} | {fmt(s, 'size_min')} | {fmt(s, 'size_mean')} | "
                f"{fmt(s, 'size_max')} | {fmt(s, 'size_std')} | {s.mean['labels_mean']:.2f} "
                f"({s.mean['labels_min']:.1f}–{s.mean['labels_max']:.1f}) | "
                f"{s.mean['holders_min']:.1f}–{s.mean['holders_max']:.1f} | {fmt(s, 'tv_mean', 3)} | "
                f"{s.cpu_ms:.1f} | {v if tag.startswith('after') else ''} |")
        print(f"{name} {label(cfg)}: {v}", flush=True)

    # Context: the other label-assignment modes of PathologicalPartitioner, through scheme: flwr.
    modes = ["| PathologicalPartitioner mode (scheme: flwr) | client size min | max | std | clients / label "
             "(min–max) | mean TV from global |", "|---|---:|---:|---:|---:|---:|"]
    y = mnist.y_train.numpy().astype(np.int64)
    for mode in ("first-deterministic", "random", "deterministic"):
        cfg = PartitionConfig(scheme="flwr", num_clients=100, partitioner="PathologicalPartitioner",
                              args={"num_classes_per_partition": 2, "class_assignment_mode": mode})
        s = summarise([partition_stats(y, 10, new_partition(mnist, cfg, seed)) for seed in seeds], [0.0])
        used = " (fedlottery's `pathological`)" if mode == "first-deterministic" else ""
        modes.append(f"| {mode}{used} | {fmt(s, 'size_min')} | {fmt(s, 'size_max')} | {fmt(s, 'size_std')} | "
                     f"{s.mean['holders_min']:.1f}–{s.mean['holders_max']:.1f} | {fmt(s, 'tv_mean', 3)} |")

    shards = shard_compare(mnist, seeds)
    cost = process_cost()
    import datasets
    import flwr_datasets

    lines = [
        "# Partitions before / after moving to flwr-datasets",
        "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/partition_compare.py --seeds {args.seeds}"
        f" --confirm-seeds {args.confirm_seeds}{' --cifar10' if args.cifar10 else ''}` ({time.time() - wall:.0f} s "
        "wall).",
        f"Machine: {platform.machine()}, 2 CPUs (shared); flwr-datasets {flwr_datasets.__version__}, datasets "
        f"{datasets.__version__}, numpy {np.__version__}.",
        "",
        "Before = fedlottery's hand-written `_iid` / `_dirichlet` / `_pathological` up to commit c3f538a (copied "
        "verbatim into this script); after = `make_partitions` now (IidPartitioner, DirichletPartitioner with "
        "`self_balancing=False`, PathologicalPartitioner with `class_assignment_mode=\"first-deterministic\"`). "
        f"Each cell is the mean over {args.seeds} seeds (± the std over seeds) of a statistic over the clients of "
        "one partition; TV = total-variation distance of a client's label histogram from the training set's. "
        "Verdict: every statistic within 3 standard errors = \"match in distribution\"; a statistic beyond that is "
        f"checked again on {args.confirm_seeds} fresh seeds (seeds 1000+) and reported as a difference only if it "
        "holds there (z = (after - before) / standard error). CPU ms: median of one call (after: the whole "
        "`make_partitions`, test split `global`; it includes building the `datasets.Dataset`).",
        "",
        *table,
        "",
        "- **iid**: " + ("the same partitions as before for every seed (IidPartitioner's contiguous blocks of the "
                         "seeded order are the old `np.array_split` of the same permutation): "
                         + "; ".join(identical_notes) + "." if identical_notes else "differs (see table)."),
        "- **dirichlet**: the same rule (per class, Dir(alpha) proportions, floor of the cumulative sums, redraw "
        "while a client has < min_size images); flwr-datasets redraws at most 11 times instead of 100. Different "
        "images per client for a given seed; see the verdicts for the distribution.",
        "- **pathological**: the label assignment changed. Before: labels dealt round-robin along one seeded "
        "permutation, so every label had the same number of holders (± 1) and, with 2 labels and 10 classes, only "
        "5 distinct label pairs existed. After (first-deterministic): client i's first label is i mod 10, the "
        "others random, so clients per label vary and client sizes spread more (a label with more holders is cut "
        "into smaller pieces).",
        "",
        "### PathologicalPartitioner's label-assignment modes (MNIST, 100 clients, 2 labels)",
        "",
        *modes,
        "",
        *shards,
        "",
        *cost,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out} in {time.time() - wall:.0f} s")


if __name__ == "__main__":
    main()
