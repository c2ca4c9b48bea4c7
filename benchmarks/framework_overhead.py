"""The cost of the framework: one FedAvg experiment through fedlottery and as a plain Flower app with the
stock `flwr.serverapp.strategy.FedAvg` (same model, data, clients, epochs, batch size, optimizer).

    python benchmarks/framework_overhead.py [--rounds 12] [--repeats 2]

Both run on Flower's simulation runtime with Ray, one client actor per core. Per-round wall time is taken
from each side's own round boundaries; round 1 (actor start-up, imports) and fedlottery's last round (which
also evaluates every client) are left out; the median of the rest is compared. Runs alternate
(plain, fedlottery, fedlottery, plain, ...) so machine noise hits both. Writes
benchmarks/results/framework_overhead.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from fedlottery.config import FederatedConfig, from_dict, to_dict  # noqa: E402
from fedlottery.data import DataNotFoundError, load_dataset  # noqa: E402
from fedlottery.runs.results import read_csv  # noqa: E402
from fedlottery.runtime.simulation import backend_config, run_federated  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "framework_overhead.csv"


def experiment(dataset: str, model: str, rounds: int) -> FederatedConfig:
    return from_dict(FederatedConfig, {
        "seed": 0, "strategies": ["fedavg"], "rounds": rounds, "clients_per_round": 5,
        "data": {"dataset": dataset}, "model": {"name": model},
        "partition": {"scheme": "shards", "num_clients": 20, "shard_size": 20, "shards_per_client": 2,
                      "val_fraction": 0.0},
        "local": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "batch_size": 32, "epochs": 10},
        "evaluation": {"every": 10_000, "global_model": False},
        "simulation": {"num_cpus": 1},
    })


def plain_flower(cfg: FederatedConfig) -> list[float]:
    """A hand-written Flower app: stock FedAvg, a ClientApp with a plain PyTorch loop."""
    from fedlottery.runtime.client_app import client_data
    from fedlottery.models import build_model

    # Data comes from the same per-process cache fedlottery's clients use (captured data would be pickled
    # into every message): the comparison is of the round machinery, not of data loading.
    config_json = json.dumps(to_dict(cfg))
    dataset = load_dataset(cfg.data.dataset)
    shape, classes = dataset.input_shape, dataset.num_classes
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        x, y = client_data(config_json, int(context.node_config["partition-id"]), torch.device("cpu")).train
        net = build_model(cfg.model.name, shape, classes)
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=cfg.local.lr, momentum=cfg.local.momentum)
        for _ in range(cfg.local.epochs):
            order = torch.randperm(len(y))
            for i in range(0, len(y), cfg.local.batch_size):
                idx = order[i : i + cfg.local.batch_size]
                opt.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(y)})})
        return Message(content, reply_to=msg)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(cfg.seed)
        net = build_model(cfg.model.name, shape, classes)
        strategy = FedAvg(fraction_train=cfg.clients_per_round / cfg.partition.num_clients,
                          fraction_evaluate=0.0, min_available_nodes=cfg.partition.num_clients)
        stamps.append(time.perf_counter())
        strategy.start(grid, ArrayRecord(net.state_dict()), num_rounds=cfg.rounds, train_config=ConfigRecord(),
                       evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()) and None)

    run_simulation(server, client, num_supernodes=cfg.partition.num_clients, backend_config=backend_config(cfg))
    # stamps[0]: before start; stamps[1]: evaluate_fn(0) before round 1; stamps[r + 1]: after round r
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def fedlottery_rounds(cfg: FederatedConfig) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        run_federated(cfg, Path(tmp), log=lambda _: None)
        return [r["wall_s"] for r in read_csv(Path(tmp) / "rounds.csv")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    try:
        load_dataset("mnist")
        cfg = experiment("mnist", "lotteryfl_cnn", args.rounds)
    except DataNotFoundError:
        cfg = experiment("digits", "cnn_digits", args.rounds)
    plain, ours = [], []
    for r in range(args.repeats):
        for kind in (("plain", "fedlottery") if r % 2 == 0 else ("fedlottery", "plain")):
            if kind == "plain":
                plain += plain_flower(cfg)[1:]
            else:
                ours += fedlottery_rounds(cfg)[1:-1]
    p, o = statistics.median(plain), statistics.median(ours)
    row = {"dataset": cfg.data.dataset, "model": cfg.model.name, "clients": cfg.partition.num_clients,
           "clients_per_round": cfg.clients_per_round, "epochs": cfg.local.epochs, "rounds": cfg.rounds,
           "repeats": args.repeats, "plain_flower_s_per_round": round(p, 4), "fedlottery_s_per_round": round(o, 4),
           "ratio": round(o / p, 4), "rounds_measured_each": len(plain)}
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    print(row)
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
