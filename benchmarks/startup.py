"""Start-up of `fedlottery run`: time to the first round, total wall time, CPU-seconds and peak RSS of the whole
process tree (the driver, Ray's processes, the client actors), beside the time of `python -c "import torch,
flwr"` measured in the same run.

Usage (from the repository root, `.venv` active):

    python benchmarks/startup.py --repeats 3 [--tree OLD_CHECKOUT] [--python OTHER_ENV/bin/python]
                                 [--config configs/default.yaml] [--also-config VARIANT.yaml]
                                 [--rounds R] [--strategies A,B]

Each repeat times the import, then one `fedlottery run` per variant, alternating, so a shared machine's load falls
on all of them alike: this checkout with this interpreter, each --tree given (e.g. a `git worktree` at an older
commit) with this interpreter, and this checkout with each --python given (another environment, e.g. one without
an optional extra, to see what installing it costs a run), and this checkout with each --also-config given (the
same job with one setting changed, e.g. fewer client actors).
The first round is the moment rounds.csv gains its first row; at the peak of the summed RSS the benchmark also
notes what each kind of process held (driver, client actors, Ray's own processes). Results:
benchmarks/results/startup.csv (one row per run) and startup.md (medians, the ratio to the import and the targets
of docs/performance.md).
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_S = 0.1


def _proc_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU-s so far, RSS bytes) for every process readable in /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            statm = Path(entry.path, "statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, int(statm[1]) * PAGE)
    return table


def _descendants(root: int, table: dict[int, tuple[int, float, int]]) -> set[int]:
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


# What each process of a run is, from the head of its command line (the executable and the script, first match
# wins; Ray's workers and agents retitle themselves "ray::..."); the driver is the tree's root.
KINDS = (("ray::ClientAppActor", "client actors"), ("ray::IDLE", "idle Ray workers"),
         ("RuntimeEnvAgent", "runtime-env agent"), ("DashboardAgent", "dashboard and its agent"),
         ("dashboard", "dashboard and its agent"), ("log_monitor", "log monitor"),
         ("monitor.py", "autoscaler monitor"), ("default_worker.py", "Ray workers not yet named"),
         ("gcs_server", "GCS"), ("raylet", "raylet"))


def process_kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "other"
    head = " ".join(argv[:3])  # the rest names other processes (the raylet's arguments name the dashboard agent)
    return next((kind for needle, kind in KINDS if needle in head), "other")


class TreeMeter:
    """Polls a process tree: the peak of its summed RSS (with the RSS of each kind of process at that moment)
    and each process's last-seen CPU-seconds (a process that exits between two polls loses at most POLL_S of
    CPU; Ray's processes also outlive the driver briefly)."""

    def __init__(self, root: int):
        self.root, self.peak_rss, self.cpu, self.at_peak = root, 0, {}, {}

    def poll(self) -> None:
        table = _proc_table()
        tree = [p for p in _descendants(self.root, table) if p in table]
        total = sum(table[p][2] for p in tree)
        if total > self.peak_rss:
            self.peak_rss, self.at_peak = total, {}
            for pid in tree:
                kind = process_kind(pid, self.root)
                self.at_peak[kind] = self.at_peak.get(kind, 0) + table[pid][2]
        for pid in tree:
            self.cpu[pid] = table[pid][1]

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def time_import(python: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "import torch, flwr"], check=True)
    return time.perf_counter() - start


def first_round_seen(rounds_csv: Path) -> bool:
    try:
        with rounds_csv.open() as fh:
            return sum(1 for _ in fh) >= 2
    except OSError:
        return False


def time_run(python: str, tree: Path, config: Path, env: dict[str, str], extra: list[str] = ()) -> dict:
    """One `fedlottery run` from `tree` (with `extra` arguments): seconds to the first rounds.csv row, total,
    CPU-s and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_env = {**env, "PYTHONPATH": str(tree)}
        start = time.perf_counter()
        command = [python, "-m", "fedlottery.cli", "run", str(config), "--out", str(out), "-q", *extra]
        proc = subprocess.Popen(command,
                                cwd=tree, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        meter, first = TreeMeter(proc.pid), None
        while proc.poll() is None:
            meter.poll()
            if first is None and first_round_seen(out / "rounds.csv"):
                first = time.perf_counter() - start
            time.sleep(POLL_S)
        total = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"fedlottery run from {tree} failed: {proc.stderr.read()[-2000:]}")
    by_size = sorted(meter.at_peak.items(), key=lambda kv: -kv[1])
    at_peak = "; ".join(f"{kind} {rss / 2**20:.0f}" for kind, rss in by_size)
    return {"first_round_s": first, "total_s": total, "cpu_s": meter.cpu_seconds(),
            "peak_rss_mib": meter.peak_rss / 2**20, "at_peak_mib": at_peak}


def summarise(rows: list[dict], trees: list[str], command: str = "python benchmarks/startup.py") -> str:
    imports = [r["import_s"] for r in rows if r["tree"] == trees[0]]
    lines = [f"`{command}` ({len(imports)} alternating repeats; "
             f"`import torch, flwr`: median {statistics.median(imports):.2f} s)", "",
             "| code | first round s | first round / import | total s | CPU-s (process tree) | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for tree in trees:
        mine = [r for r in rows if r["tree"] == tree]
        med = {k: statistics.median(r[k] for r in mine) for k in ("first_round_s", "total_s", "cpu_s", "peak_rss_mib")}
        ratio = statistics.median(r["first_round_s"] / r["import_s"] for r in mine)
        lines.append(f"| {tree} | {med['first_round_s']:.2f} | {ratio:.2f}x | {med['total_s']:.2f} | "
                     f"{med['cpu_s']:.1f} | {med['peak_rss_mib']:.0f} |")
    lines += ["", "At each variant's highest peak, MiB of RSS by process (shared library pages count in every "
              "process that maps them, as in the peak):", ""]
    for tree in trees:
        highest = max((r for r in rows if r["tree"] == tree), key=lambda r: r["peak_rss_mib"])
        lines.append(f"- {tree}: {highest['at_peak_mib']}")
    return "\n".join(lines) + "\n"


def write_results(out: Path, rows: list[dict], table: str) -> None:
    """A benchmark's rows to OUT.csv, its summary table to OUT.md, and the table to the terminal."""
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".md").write_text(table)
    print(table)


def _label(python: str, tree: str, config: Path, default_config: Path) -> str:
    """A variant's name in the table: its code tree, and its interpreter and config where they are not this
    run's."""
    label = tree if python == sys.executable else f"{tree} with {python}"
    return label if config == default_config else f"{label} with {config.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--tree", action="append", default=[], help="another checkout to time beside this one")
    parser.add_argument("--python", action="append", default=[],
                        help="another environment's interpreter to run this checkout with, beside this one")
    parser.add_argument("--also-config", action="append", default=[],
                        help="another config to run this checkout with, beside --config")
    parser.add_argument("--rounds", type=int, help="run this many rounds instead of the config's (the last is evaluated)")
    parser.add_argument("--strategies", help="comma-separated: run only these of the config's strategies")
    parser.add_argument("--out", default=str(RESULTS / "startup"), help="OUT.csv and OUT.md are written")
    args = parser.parse_args()
    extra = (["--rounds", str(args.rounds)] if args.rounds else []) + \
        (["--set", f"strategies=[{args.strategies}]"] if args.strategies else [])
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    env.setdefault("FEDLOTTERY_DATA", str(ROOT.parent / "shared" / "data"))
    config = Path(args.config).resolve()
    variants = [(sys.executable, str(ROOT), config)]
    variants += [(sys.executable, str(Path(t).resolve()), config) for t in args.tree]
    variants += [(python, str(ROOT), config) for python in args.python]
    variants += [(sys.executable, str(ROOT), Path(c).resolve()) for c in args.also_config]
    labels = [_label(python, tree, cfg, config) for python, tree, cfg in variants]
    rows = []
    for repeat in range(args.repeats):
        import_s = time_import(sys.executable)
        for (python, tree, cfg), label in zip(variants, labels):
            row = {"repeat": repeat, "tree": label, "import_s": import_s, **time_run(python, Path(tree), cfg, env, extra)}
            rows.append(row)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    command = " ".join(["python benchmarks/startup.py", *sys.argv[1:]])
    write_results(Path(args.out), rows, summarise(rows, labels, command))


if __name__ == "__main__":
    main()
