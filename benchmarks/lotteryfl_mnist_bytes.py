"""Bytes of LotteryFL(0.1) vs FedAvg on real MNIST (LotteryFL's Table 2 setting) with fedlottery's codecs.

    python benchmarks/lotteryfl_mnist_bytes.py --rounds 40   # runs configs/lotteryfl_mnist.yaml, then the table
    python benchmarks/lotteryfl_mnist_bytes.py --table-only  # re-make the table from the recorded run

Writes benchmarks/results/lotteryfl_mnist_codecs/{rounds.csv,clients.csv,summary.json,table.md}. The table puts
the measured payload bytes (everything in the training messages, both directions) beside dense FedAvg's and
beside the papers' accounting (uplink weight values only), and beside the bytes recorded for the same rounds
by benchmarks/results/lotteryfl_mnist/ (the same seed, clients and training, sent with the earlier wire
format: float32 values plus a bit-packed mask whenever it changed). The value bytes of both runs are compared
round by round, so the comparison is like for like only where they agree (the `same values` column).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.runs.report import MB  # noqa: E402
from fedlottery.runs.results import read_csv, read_json  # noqa: E402

CONFIG = ROOT / "configs" / "lotteryfl_mnist.yaml"
OUT = ROOT / "benchmarks" / "results" / "lotteryfl_mnist_codecs"
EARLIER = ROOT / "benchmarks" / "results" / "lotteryfl_mnist" / "rounds.csv"


def table() -> str:
    rows = read_csv(OUT / "rounds.csv")
    earlier = read_csv(EARLIER) if EARLIER.exists() else []
    summary = read_json(OUT / "summary.json")["strategies"]
    total = {n: s["bytes_up"] + s["bytes_down"] for n, s in summary.items()}
    lines = [
        "| strategy | rounds | MiB up | MiB down | MiB up + down | vs FedAvg (up + down) | MiB up, values only "
        "(paper's accounting) | measured up / values-only up | earlier wire format, same rounds: MiB up + down "
        "| this / earlier | same values |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        mine = {r["round"]: r for r in rows if r["strategy"] == name}
        old = {r["round"]: r for r in earlier if r["strategy"] == name and r["round"] in mine}
        old_total = sum(r["bytes_up"] + r["bytes_down"] for r in old.values())
        same = len(old) == len(mine) and all(old[k]["values_bytes_up"] == mine[k]["values_bytes_up"]
                                             for k in mine)
        lines.append(
            f"| {name} | {len(mine)} | {s['bytes_up'] / MB:.2f} | {s['bytes_down'] / MB:.2f} | "
            f"{total[name] / MB:.2f} | "
            f"{total[name] / total['fedavg']:.3f} | {s['values_bytes_up'] / MB:.2f} | "
            f"{s['bytes_up'] / s['values_bytes_up']:.3f} | {old_total / MB:.2f} | "
            f"{total[name] / old_total:.3f} | {'yes' if same else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="rounds to run (the paper: 400)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        cmd = [sys.executable, "-m", "fedlottery.cli", "run", str(CONFIG), "--out", str(OUT), "--overwrite",
               "--rounds", str(args.rounds)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    text = table()
    (OUT / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
