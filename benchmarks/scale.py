"""What a round costs as the population grows: 100, 1,000 and 10,000 simulated clients on this machine.

Each population runs in a fresh process (so the driver's memory is its own): real MNIST, LotteryFL's shards
(2 shards of 2 images per client at every size, so a round's work is the same), LotteryFL's CNN, LotteryFL with 20 clients per round for a few
rounds, then one evaluation of every client (`test: matched`: the 10,000 test images spread over the clients
with their own label mix, so the forward passes are the same at every size). A sampler thread reads /proc
every 0.2 s for the driver's RSS and the whole process tree's RSS and PSS (Ray's GCS, raylet and client
actors are all descendants of the driver). The compute floor is measured in the same process before the run:
one thread, LotteryFL's CNN on MNIST test images at its best batch size and memory format, divided by the
number of cores (one client actor per core), for the naive work: every client's own test images, one forward
pass each. The `--labels-eval` rows test 400 clients on every test image of their labels (~76 clients per
image): `local`'s clients each hold a model of their own (every tensor personal), so none of that work can be
shared and the row measures the naive floor; FedAvg's clients all hold theta_g, which each actor scores once on
the whole test set (fedlottery.runtime.shared_evaluation), so its fraction of that floor can pass 1. (LotteryFL is no
naive-work row after a few rounds: a client that has not pruned yet holds theta_g too, and shares it.)

    python benchmarks/scale.py                      # 100, 1000, 10000 -> benchmarks/results/scale.csv / .md
    python benchmarks/scale.py --clients 100,1000   # a subset
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["clients", "rounds", "train_round_s", "train_round_ratio_to_100", "eval_s", "eval_s_per_1000_clients",
           "eval_forward_passes", "eval_floor_s", "eval_fraction_of_floor", "peak_rss_driver_mib",
           "peak_rss_total_mib", "peak_pss_total_mib", "server_mask_bytes_per_client", "setup_s", "wall_s"]
ROUNDS = 4


def _config(clients: int, test: str = "matched", strategy: str = "lotteryfl") -> dict:
    """Equal work per client at every size: 2 one-label shards of 2 images (3 to train on, 1 to validate)."""
    return {
        "seed": 0, "strategies": [strategy], "rounds": ROUNDS, "clients_per_round": 20,
        "data": {"dataset": "mnist"}, "model": {"name": "lotteryfl_cnn", "init": "default"},
        "partition": {"scheme": "shards", "num_clients": clients, "shard_size": 2, "shards_per_client": 2,
                      "val_fraction": 0.25, "test": test},
        "local": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "batch_size": 32, "epochs": 10},
        "evaluation": {"every": ROUNDS, "global_model": False},
        "strategy_options": {"lotteryfl": {"acc_threshold": 0.5, "prune_rate": 0.2, "target_density": 0.1}},
        "simulation": {"num_cpus": 1, "round_timeout": 3600},
        "checkpoint": {"every": 0},
    }


# ---- memory of the process tree ----------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak RSS of this process, and peak RSS / PSS summed over its whole process tree."""

    def __init__(self):
        super().__init__(daemon=True)
        self.driver = self.total_rss = self.total_pss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            tree, pids, todo = _children(), [], [me]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(tree.get(pid, []))
            self.driver = max(self.driver, _kib(me, "status", "VmRSS:"))
            self.total_rss = max(self.total_rss, sum(_kib(p, "status", "VmRSS:") for p in pids))
            self.total_pss = max(self.total_pss, sum(_kib(p, "smaps_rollup", "Pss:") for p in pids))
            self.stop.wait(0.2)


# ---- the compute floor ---------------------------------------------------------------------------------------
def floor_seconds(x_test, passes: int) -> float:
    """Seconds one thread needs for `passes` forward passes of LotteryFL's CNN at its best batch size and
    memory format (a bare `model(x)` loop under inference_mode, as benchmarks/eval_floor.py measures it)."""
    import torch

    from fedlottery.models import build_model

    torch.set_num_threads(1)
    model = build_model("lotteryfl_cnn", (1, 28, 28), 10).eval().to(memory_format=torch.channels_last)
    best = 0.0
    with torch.inference_mode():
        for batch in (128, 500, 2000):
            x = x_test[:batch].contiguous(memory_format=torch.channels_last)
            model(x)
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.5:
                model(x)
                reps += 1
            best = max(best, reps * len(x) / (time.perf_counter() - start))
    torch.set_num_threads(os.cpu_count() or 1)
    return passes / best


def run_one(clients: int, test: str = "matched", strategy: str = "lotteryfl") -> dict:
    from fedlottery.config import FederatedConfig, from_dict
    from fedlottery.data import load_dataset
    from fedlottery.runs.results import read_csv
    from fedlottery.runtime.simulation import run_federated

    from fedlottery.data import make_partitions

    cfg = from_dict(FederatedConfig, _config(clients, test, strategy))
    dataset = load_dataset("mnist", None)
    # `matched`: every test image once over all clients; `labels`: every test image of a client's labels
    passes = sum(len(split.test) for split in make_partitions(dataset, cfg.partition, cfg.seed))
    floor_one_thread = floor_seconds(dataset.inputs("test"), passes)
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_federated(cfg, Path(out), log=lambda line: print(line, file=sys.stderr, flush=True))
        rows = read_csv(Path(out) / "rounds.csv")
        summary = json.loads((Path(out) / "summary.json").read_text())
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    train = [r["wall_s"] - (r["eval_wall_s"] or 0) for r in rows[1:]]  # round 1 warms the actors up
    eval_s = sum(r["eval_wall_s"] or 0 for r in rows)
    actors = os.cpu_count() or 1
    floor = floor_one_thread / actors
    return {
        "clients": clients if test == "matched" else f"{clients} (test: {test}, {strategy})", "rounds": len(rows), "train_round_s": round(sum(train) / len(train), 3),
        "eval_s": round(eval_s, 2), "eval_s_per_1000_clients": round(1000 * eval_s / clients, 2),
        "eval_forward_passes": passes, "eval_floor_s": round(floor, 2),
        "eval_fraction_of_floor": round(floor / eval_s, 3),
        "peak_rss_driver_mib": round(sampler.driver / 1024), "peak_rss_total_mib": round(sampler.total_rss / 1024),
        "peak_pss_total_mib": round(sampler.total_pss / 1024),
        "server_mask_bytes_per_client": summary["strategies"][strategy].get("server_mask_bytes_per_client"),
        "setup_s": round(wall - sum(r["wall_s"] for r in rows), 1), "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="100,1000,10000")
    parser.add_argument("--labels-eval", type=int, default=400,
                        help="also this many clients tested on every test image of their labels (compute-bound "
                             "evaluation, LotteryFL's Table-2 test sets); 0: skip")
    parser.add_argument("--labels-strategies", default="local,fedavg",
                        help="the strategies of the --labels-eval rows: local tests every client on a model of "
                             "its own (the naive work); FedAvg's clients share theta_g, scored once per actor "
                             "(fedlottery.runtime.shared_evaluation)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one population, JSON to stdout
    parser.add_argument("--test", default="matched", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="lotteryfl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.test, args.strategy)))
        return
    results = []
    runs = [(int(c), "matched", "lotteryfl") for c in args.clients.split(",")]
    if args.labels_eval:
        runs += [(args.labels_eval, "labels", name) for name in args.labels_strategies.split(",")]
    for clients, test, strategy in runs:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
        done = subprocess.run([sys.executable, __file__, "--one", str(clients), "--test", test,
                               "--strategy", strategy], cwd=ROOT, env=env,
                              check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        base = results[0]["train_round_s"]
        for r in results:
            r["train_round_ratio_to_100"] = round(r["train_round_s"] / base, 3)
        _write(results, args.clients)
        print(results[-1], flush=True)


def _write(results: list[dict], clients: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "scale.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(results)
    lines = [f"`python benchmarks/scale.py --clients {clients}` (LotteryFL, LotteryFL's CNN, real MNIST shards, "
             f"20 clients per round, {ROUNDS} rounds, one all-client evaluation; 2-core machine)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in results]
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
