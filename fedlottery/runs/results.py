"""Result records: row-at-a-time CSV logs, progress lines with ETA, summaries and plots.

Rows are appended and flushed as each unit of work ends, so a killed run loses at most the unit in flight.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable


ROUND_COLUMNS = [
    "round", "strategy", "seed", "clients", "sampled", "personalized_acc_mean", "evaluated_clients", "paper_metric",
    "global_acc", "deployed_acc_mean", "finetuned_acc_mean", "density_mean",
    "bytes_up", "bytes_down", "bytes_down_broadcast", "values_bytes_up", "values_bytes_down", "eval_bytes",
    "pruned_clients", "failed_train_clients", "failed_eval_clients", "wall_s", "eval_wall_s",
]
# `sampled`: the partition ids asked to train that round, space-separated (fedlottery.runs.results.sampled_ids).
# Columns added since rounds.csv was first written: a run resumed from an older checkpoint keeps its file's header
# (CsvLog) and goes on without them, rather than mixing two schemas in one file; `fedlottery merge` joins an older
# record and a newer run under the newer header, the older rows' cells empty (read back as None: not recorded).
LATER_ROUND_COLUMNS = ("sampled",)


class CsvLog:
    """Append-only CSV with a fixed header; refuses to mix schemas in one file.

    optional: columns an existing file may lack because it was written before they were added (a resumed older
    run); such a file keeps its own header and those columns are not written to it, so it stays one schema."""

    def __init__(self, path: Path, columns: list[str], optional: tuple[str, ...] = ()):
        self.path, self.columns = Path(path), columns
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open() as f:
                header = next(csv.reader(f), [])
            older = [c for c in columns if c in header or c not in optional]
            if header not in (columns, older):
                raise ValueError(f"{self.path} has columns {header}, expected {columns}; use another output dir")
            self.columns = header
        else:
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(columns)

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row[c] for c in self.columns])


def read_csv(path: Path) -> list[dict]:
    """Rows of a results CSV with numbers parsed back (empty cells become None)."""
    with Path(path).open() as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def sampled_ids(value) -> list[int]:
    """A rounds.csv `sampled` cell as partition ids: read_csv gives "3 5 7", a lone 4 as an int, "" as None."""
    if value is None:
        return []
    return [int(p) for p in str(value).split()]


def _parse(value: str):
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a summary."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError:  # a full disk: the previous summary stays, no half file beside it
        tmp.unlink(missing_ok=True)
        raise


class Progress:
    """'[k/n] message (elapsed, ETA)' lines for long work.

    The ETA is measured from the second unit on: the first one carries the start-up (Ray and its client actors
    coming up, imports, data loading, first-call warm-up), which would inflate every later estimate. Until a
    second unit is done the line says when the estimate will come instead of guessing."""

    def __init__(self, total: int, log: Callable[[str], None] = print):
        self.total, self.done, self.log = total, 0, log
        self.start = time.perf_counter()
        self._first_done: float | None = None  # when this process finished its first unit

    def skip(self, done: int) -> None:
        """Units finished by an earlier process (a resumed run): out of the count and of the ETA."""
        self.total -= done

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self) -> float | None:
        """Seconds left at the pace of the units after the first, or None before there is such a unit."""
        if self.done >= self.total:
            return 0.0
        if self._first_done is None or self.done < 2:
            return None
        return (time.perf_counter() - self._first_done) / (self.done - 1) * (self.total - self.done)

    def warn(self, message: str) -> None:
        """A line that changes how the results read (clients dropped, a model kept): to stderr always, --quiet
        included, whatever `log` does with progress lines."""
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def step(self, message: str) -> None:
        self.done += 1
        if self.done == 1:
            self._first_done = time.perf_counter()
        eta = self.eta()
        when = f"ETA {_fmt(eta)}" if eta is not None else f"ETA from [2/{self.total}] on"
        self.log(f"[{self.done}/{self.total}] {message} ({_fmt(self.elapsed())} elapsed, {when})")


def partition_table(summary: dict) -> str:
    """`fedlottery.data.describe`'s partition summary as a small table for a run's log: per-client min / mean /
    max of the train, validation and test images and of the labels, with the train / validation totals."""
    n = summary["num_clients"]
    rows = [("train images", summary["train_size"], summary.get("total_train")),
            ("val images", summary["val_size"], summary.get("total_val")),
            ("test images", summary["test_size"], None),  # clients' test sets may share images: no total
            ("labels", summary["labels_per_client"], None)]
    lines = [f"partitions: {n} clients", f"  {'per client':<13}{'min':>7}{'mean':>9}{'max':>7}{'total':>9}"]
    for name, stats, total in rows:
        lines.append(f"  {name:<13}{stats['min']:>7}{stats['mean']:>9.1f}{stats['max']:>7}"
                     + (f"{total:>9}" if total is not None else ""))
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize_levels(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (variant, level), ordered by variant then level."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], int(row["level"]))].append(row)
    order = {"ticket": 0, "reinit": 1, "random_mask": 2, "supermask": 3}
    summary = []
    for (variant, level), group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        entry = {"variant": variant, "level": level, "seeds": len(group)}
        for key in ("percent_remaining", "test_acc_early_stop", "test_acc_final", "early_stop_iteration"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(r[key] for r in group)
        summary.append(entry)
    return summary


def plot_levels(summary: list[dict], path: Path, title: str = "") -> None:
    """Test accuracy (at early stop) and early-stop iteration vs. percent of weights remaining, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"ticket": ("C0", "o"), "reinit": ("C3", "s"), "random_mask": ("C2", "^"), "supermask": ("C4", "D")}
    for variant in dict.fromkeys(e["variant"] for e in summary):
        entries = [e for e in summary if e["variant"] == variant]
        x = [e["percent_remaining_mean"] for e in entries]
        color, marker = styles.get(variant, ("C7", "x"))
        for ax, key, scale in ((axes[0], "test_acc_early_stop", 100), (axes[1], "early_stop_iteration", 1)):
            y = [(e[f"{key}_mean"] or 0) * scale for e in entries]
            err = [(e[f"{key}_std"] or 0) * scale for e in entries]
            ax.errorbar(x, y, yerr=err, label=variant, color=color, marker=marker, capsize=3)
    for ax, label in ((axes[0], "test accuracy at early stop (%)"), (axes[1], "early-stop iteration")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
