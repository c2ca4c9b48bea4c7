"""Where a client actor's CPU goes in a training round: py-spy samples one actor of a real run.

    python benchmarks/actor_profile.py [--config configs/table2_mnist.yaml] [--strategy lotteryfl]
                                       [--rounds 40] [--seconds 40]

Starts `fedlottery run` on the config's --strategy for --rounds rounds (one evaluation, at the last round), waits
until rounds.csv holds round 1 (start-up done, so the samples are training rounds), then records one client actor
for --seconds with `py-spy record --pid` (100 samples per second, idle samples left out). The table gives each
function's inclusive share of the samples: the part of the actor's time spent in it and what it calls.

Why: benchmarks/training_round_layout.py measures that a round costs more than a bare PyTorch loop doing the same
clients' training; this says which of the actor's steps the difference is made of (the masked training step
itself, the client's state loaded and saved, the model built, the payload decoded and encoded, the strategy's
own checks). Writes benchmarks/results/actor_profile.md (and the raw samples beside it, .txt).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import _descendants, _proc_table, process_kind  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "actor_profile"
SHOWN = 40  # functions listed


def client_actor(root: int) -> int | None:
    """The first client actor (Ray worker running Flower's ClientAppActor) below the driver, or None yet."""
    return next((pid for pid in sorted(_descendants(root, _proc_table()))
                 if process_kind(pid, root) == "client actors"), None)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def record(args: argparse.Namespace, raw: Path) -> None:
    """Run the job and sample one of its client actors into `raw` (py-spy's raw format)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fedlottery.cli", "run", args.config, "--rounds", str(args.rounds),
               "--set", f"strategies=[{args.strategy}]", "--set", f"evaluation.every={args.rounds}",
               "--out", f"{tmp}/run", "-q"]
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rounds_csv = Path(tmp) / "run" / "rounds.csv"
            wait_for(lambda: rounds_csv.exists() and rounds_csv.read_text().count("\n") >= 2, 600, "round 1")
            actor = wait_for(lambda: client_actor(job.pid), 60, "a client actor")
            subprocess.run(["py-spy", "record", "--pid", str(actor), "--duration", str(args.seconds), "--rate",
                            "100", "--format", "raw", "--output", str(raw)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            job.terminate()
            job.wait(60)


def frame_name(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> 'fn (file.py)': one row per function, whatever its line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


def inclusive_shares(raw: Path) -> tuple[int, list[tuple[str, float]]]:
    """Total samples and, per function, the share of samples with it anywhere on the stack (counted once)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        for name in {frame_name(f) for f in stack.split(";")}:
            counts[name] += int(n)
    return total, [(name, n / total) for name, n in counts.most_common()]


def summarise(args: argparse.Namespace, total: int, shares: list[tuple[str, float]]) -> str:
    command = " ".join(["python benchmarks/actor_profile.py", "--config", args.config, "--strategy", args.strategy,
                        "--rounds", str(args.rounds), "--seconds", str(args.seconds)])
    lines = [f"`{command}`", "",
             f"{total} samples of one client actor over {args.seconds} s of training rounds "
             f"(1-minute load average at the end: {os.getloadavg()[0]:.1f}).", "",
             "| function (file) | share of the actor's samples |", "|---|---|"]
    lines += [f"| `{name}` | {100 * share:.1f}% |" for name, share in shares[:SHOWN]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/table2_mnist.yaml")
    parser.add_argument("--strategy", default="lotteryfl")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=40)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy (a sampling profiler; not a dependency of fedlottery)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    raw = OUT.with_suffix(".txt")
    record(args, raw)
    total, shares = inclusive_shares(raw)
    text = summarise(args, total, shares)
    OUT.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
