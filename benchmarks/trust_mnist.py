"""Runs a researcher can trust, measured on real MNIST (configs/compare_mnist.yaml: LotteryFL's shards, 100
clients, 10 per round), FedAvg and LotteryFL:

1. the same config and seed run twice: every result file compared byte for byte (wall times aside);
2. the same run with about 20% faulty clients (`faults:` below): it completes, the failures counted in
   rounds.csv equal the faults injected (replayed from fedlottery.runtime.faults and the base strategy's seeded
   sampling), and the accuracy is put beside the clean run's.

    python benchmarks/trust_mnist.py --rounds 40     # three runs, then benchmarks/results/trust_mnist/table.md
    python benchmarks/trust_mnist.py --table-only    # re-make the table from the recorded runs
    python benchmarks/trust_mnist.py --faulty-only   # re-run only the faulty run

The recorded runs under benchmarks/results/trust_mnist predate the paired schedule (fedlottery.schedule): they
were sampled and faulted per strategy, so --table-only on them replays a rule they did not use; re-run first.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.config import FaultsConfig  # noqa: E402
from fedlottery.runtime.faults import EVAL_FAULTS, TRAIN_FAULTS, faults_of  # noqa: E402
from fedlottery.runs.results import read_csv, read_json  # noqa: E402
from fedlottery.schedule import scheduled_clients  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "trust_mnist"
STRATEGIES = ["fedavg", "lotteryfl"]
# Each training fault 4% per sampled client and round (P(any) = 18.5%), 20% of evaluations crash.
FAULTS = {"train_crash": 0.04, "late": 0.04, "corrupt": 0.04, "nan": 0.04, "lie_examples": 0.04,
          "eval_crash": 0.2}
ROUND_TIMEOUT = 30.0


def _config(rounds: int, faults: dict | None) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "compare_mnist.yaml").read_text())
    cfg["strategies"], cfg["rounds"] = STRATEGIES, rounds
    cfg["evaluation"]["every"] = 10
    cfg["evaluation"]["finetune_epochs"] = 0  # as recorded (compare_mnist.yaml gained a fine-tuned column later)
    cfg["simulation"]["round_timeout"] = ROUND_TIMEOUT
    if faults:
        cfg["faults"] = faults
        # A late client sleeps past the deadline in its actor; with only one actor per core, two late clients
        # in a round would hold both and make every other client of that round late too. Four half-CPU actors
        # (sleeping ones use no CPU) keep the stragglers' delay on the stragglers, as on real devices.
        cfg["simulation"].update({"actors": 4, "num_cpus": 0.5})
    name = "faulty" if faults else "clean"
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run(config: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def _without_wall(out: Path) -> tuple:
    with (out / "rounds.csv").open() as f:
        rounds = [{k: v for k, v in r.items() if k not in ("wall_s", "eval_wall_s")} for r in csv.DictReader(f)]
    summary = json.loads((out / "summary.json").read_text())
    for s in summary["strategies"].values():
        s.pop("wall_s")
    return rounds, (out / "clients.csv").read_bytes(), summary


def _injected(cfg: dict) -> dict[tuple[str, int], tuple[int, int]]:
    """(strategy, round) -> (training faults among the sampled clients, evaluation faults among all)."""
    faults = FaultsConfig(**cfg["faults"])
    clients, per_round, seed = cfg["partition"]["num_clients"], cfg["clients_per_round"], cfg["seed"]
    out = {}
    for name in cfg["strategies"]:
        for rnd in range(1, cfg["rounds"] + 1):
            sampled = scheduled_clients(seed, rnd, range(clients), per_round)  # FederatedStrategy.sample, replayed
            train = sum(bool(faults_of(faults, seed, rnd, p, TRAIN_FAULTS)) for p in sampled)
            evaluated = rnd % cfg["evaluation"]["every"] == 0 or rnd == cfg["rounds"]
            evals = sum(bool(faults_of(faults, seed, rnd, p, EVAL_FAULTS)) for p in range(clients)) \
                if evaluated else 0
            out[(name, rnd)] = (train, evals)
    return out


def table() -> str:
    a, b = _without_wall(OUT / "clean"), _without_wall(OUT / "clean_again")
    same = {"rounds.csv": a[0] == b[0], "clients.csv": a[1] == b[1], "summary.json": a[2] == b[2]}
    faulty_cfg = yaml.safe_load((OUT / "faulty.yaml").read_text())
    injected = _injected(faulty_cfg)
    rows = read_csv(OUT / "faulty" / "rounds.csv")
    clean = read_json(OUT / "clean" / "summary.json")["strategies"]
    faulty = read_json(OUT / "faulty" / "summary.json")["strategies"]
    lines = ["Same seed twice (clean run): " + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}"
                                                     for k, v in same.items()), "",
             "| strategy | rounds | training faults injected | counted (failed_train_clients) | evaluation faults "
             "injected | counted (failed_eval_clients) | counts equal every round | personalised acc % clean | "
             "faulty (evaluated clients) | global acc % clean | faulty |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in faulty_cfg["strategies"]:
        mine = [r for r in rows if r["strategy"] == name]
        inj_t = sum(injected[(name, r["round"])][0] for r in mine)
        inj_e = sum(injected[(name, r["round"])][1] for r in mine)
        got_t = sum(r["failed_train_clients"] for r in mine)
        got_e = sum(r["failed_eval_clients"] or 0 for r in mine)
        every = all((r["failed_train_clients"], r["failed_eval_clients"] or 0) == injected[(name, r["round"])]
                    for r in mine)
        c, f = clean[name], faulty[name]
        lines.append(
            f"| {name} | {len(mine)} | {inj_t} | {got_t} | {inj_e} | {got_e} | {'yes' if every else 'NO'} | "
            f"{100 * c['personalized_acc_final']:.2f} | {100 * f['personalized_acc_final']:.2f} "
            f"({f['evaluated_clients_final']} of {f['clients']}) | {100 * c['global_acc_final']:.2f} | "
            f"{100 * f['global_acc_final']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--faulty-only", action="store_true", help="keep the recorded clean runs")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not args.faulty_only:
            clean = _config(args.rounds, None)
            _run(clean, OUT / "clean")
            _run(clean, OUT / "clean_again")
        _run(_config(args.rounds, FAULTS), OUT / "faulty")
    text = table()
    (OUT / "table.md").write_text(f"`python benchmarks/trust_mnist.py --rounds {args.rounds}`\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
