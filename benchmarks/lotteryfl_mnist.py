"""LotteryFL(0.1) vs FedAvg on real MNIST in LotteryFL's Table 2 setting, beside the paper's numbers.

    python benchmarks/lotteryfl_mnist.py [--rounds N]     # runs configs/lotteryfl_mnist.yaml, then the table
    python benchmarks/lotteryfl_mnist.py --table-only     # re-make the table from the recorded run

Writes benchmarks/results/lotteryfl_mnist/{rounds.csv,clients.csv,summary.json,table.md,*.png}. The table
puts the honest metric (final round, every client's personalised model on its whole local test set), the
paper's metric (mean over clients of the best accuracy over evaluated rounds), the global model's accuracy,
and MB by the paper's accounting (uplink weight values only, MiB) and by full measured payload bytes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.runs.report import MB, report  # noqa: E402
from fedlottery.runs.results import read_csv, read_json  # noqa: E402

CONFIG = ROOT / "configs" / "lotteryfl_mnist.yaml"
OUT = ROOT / "benchmarks" / "results" / "lotteryfl_mnist"
PAPER = {"fedavg": ("96.46", "663.76"), "lotteryfl": ("99.96", "163.57")}  # Table 2, MNIST, 20 clients/round


def table() -> str:
    summary = read_json(OUT / "summary.json")
    rounds = read_csv(OUT / "rounds.csv")
    lines = [
        "| strategy | rounds run | honest personalised acc % (final, all clients) | paper metric % (best of rounds) "
        "| global acc % | deployed acc % (own last trained weights) | mean density | MiB up, values only (paper's accounting) | MiB up + down, measured payload "
        "| paper: acc % / MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["strategies"].items():
        done = sum(1 for r in rounds if r["strategy"] == name)
        acc, mib = PAPER.get(name, ("", ""))
        lines.append(
            f"| {name} | {done} | {100 * s['personalized_acc_final']:.2f} ± {100 * s['personalized_acc_std']:.1f} | "
            f"{100 * s['paper_metric_best_of_rounds']:.2f} | {100 * (s['global_acc_final'] or 0):.2f} | "
            f"{100 * (s['deployed_acc_final'] or 0):.2f} | "
            f"{s['density_mean_final']:.3f} | {s['values_bytes_up'] / MB:.2f} | "
            f"{(s['bytes_up'] + s['bytes_down']) / MB:.2f} | {acc} / {mib} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="fewer rounds than the paper's 400 (say so when reporting)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        cmd = [sys.executable, "-m", "fedlottery.cli", "run", str(CONFIG), "--out", str(OUT), "--overwrite"]
        if args.rounds:
            cmd += ["--rounds", str(args.rounds)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    text = table()
    report([OUT], OUT)  # this script writes the record: its plots go next to the results
    (OUT / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
