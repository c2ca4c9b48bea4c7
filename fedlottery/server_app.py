"""The Flower ServerApp: builds theta_0 and each strategy, runs the rounds, meters bytes, writes results.

Used by `flwr run .` (the `app` below reads the config path from the run config) and in-process by
`fedlottery run` (fedlottery.simulation). Each strategy in the config runs in turn on the same clients,
partition, model and theta_0; every round appends one row to DIR/rounds.csv as it ends.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlottery.comm import ByteMeter, broadcast_bytes, content_bytes, values_bytes
from fedlottery.config import FederatedConfig, load_federated_config, to_dict
from fedlottery.data import describe, load_dataset, make_partitions
from fedlottery.models import batchnorm_names, build_model, clone_state, prunable_names
from fedlottery.results import CsvLog, Progress, stderr_log, write_json
from fedlottery.training import evaluate
from strategies import get_strategy
from strategies.base import FederatedStrategy, ServerSetup

ROUND_COLUMNS = [
    "round", "strategy", "clients", "personalized_acc_mean", "paper_metric", "global_acc", "deployed_acc_mean",
    "density_mean",
    "bytes_up", "bytes_down", "bytes_down_broadcast", "values_bytes_up", "values_bytes_down", "eval_bytes",
    "pruned_clients", "failed_clients", "wall_s",
]
RESULT_FILES = ("rounds.csv", "clients.csv", "summary.json")


@dataclass
class StrategyRun:
    """Bookkeeping for one strategy's rounds: per-client accuracies and the best each ever reached."""

    name: str
    meter: ByteMeter = field(default_factory=ByteMeter)
    last_acc: dict[int, float] = field(default_factory=dict)
    best_acc: dict[int, float] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


def discover_clients(grid: Grid, cfg: FederatedConfig, timeout: float = 600) -> dict[int, int]:
    """Send every node the experiment and learn which partition it holds: partition id -> node id."""
    expected = cfg.partition.num_clients
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} client nodes connected within {timeout:.0f}s")
        time.sleep(0.5)
    config = ConfigRecord({"experiment": json.dumps(to_dict(cfg))})
    messages = [Message(RecordDict({"config": config}), node, MessageType.QUERY) for node in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"client setup failed on node {reply.metadata.src_node_id}: {reply.error.reason}")
        pid = int(reply.content["metrics"]["partition-id"])
        if pid in node_of:
            raise RuntimeError(f"two nodes claim partition {pid}: check num-supernodes and partition.num_clients")
        node_of[pid] = reply.metadata.src_node_id
    missing = sorted(set(range(expected)) - set(node_of))
    if missing:
        raise RuntimeError(f"no node holds partitions {missing[:10]}: num-supernodes must equal partition.num_clients")
    return node_of


def run_experiment(grid: Grid, cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None] = stderr_log) -> dict:
    """Run every configured strategy for cfg.rounds rounds; returns the summary also written to summary.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    splits = make_partitions(dataset, cfg.partition, cfg.seed)
    log(f"partitions: {describe(splits)}")
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    theta0, prunable, batchnorm = clone_state(template), prunable_names(template), batchnorm_names(template)
    node_of = discover_clients(grid, cfg)
    rounds_log = CsvLog(out_dir / "rounds.csv", ROUND_COLUMNS)
    clients_log = CsvLog(out_dir / "clients.csv", ["strategy", "partition_id", "final_acc", "best_acc", "density"])
    progress = Progress(cfg.rounds * len(cfg.strategies), log)
    summary: dict = {"config": to_dict(cfg), "strategies": {}}
    for name in cfg.strategies:
        setup = ServerSetup(theta0, prunable, node_of, cfg.clients_per_round, cfg.seed, cfg.local, batchnorm,
                            cfg.comm)
        strategy = get_strategy(name)(setup, cfg.options_for(name))
        strategy.summary()
        run = _run_strategy(grid, cfg, strategy, template, dataset, rounds_log, progress)
        for pid in sorted(node_of):
            clients_log.append({"strategy": name, "partition_id": pid, "final_acc": run.last_acc.get(pid),
                                "best_acc": run.best_acc.get(pid), "density": strategy.masks[pid].density()})
        summary["strategies"][name] = _strategy_summary(run, strategy)
        write_json(out_dir / "summary.json", summary)
    return summary


def _run_strategy(grid, cfg, strategy: FederatedStrategy, template, dataset, rounds_log, progress) -> StrategyRun:
    run = StrategyRun(strategy.name)
    meter = run.meter
    prunable = set(strategy.setup.prunable)
    test = (dataset.x_test, dataset.y_test)
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        messages = list(strategy.configure_train(rnd, None, None, grid))
        for msg in messages:
            pid = strategy.partition_of[msg.metadata.dst_node_id]
            meter.add(rnd, pid, "down", content_bytes(msg.content), values_bytes(msg.content["model"], prunable))
            strategy.note_sent(msg)
        meter.add_broadcast(rnd, broadcast_bytes(messages))
        replies = list(grid.send_and_receive(messages))
        for reply in replies:
            if not reply.has_error():
                pid = strategy.partition_of.get(reply.metadata.src_node_id, -1)
                meter.add(rnd, pid, "up", content_bytes(reply.content), values_bytes(reply.content["model"], prunable))
        failures_before = len(strategy.failures)
        _, train_metrics = strategy.aggregate_train(rnd, replies)
        failed = len(messages) - int(train_metrics["clients"])
        row = {
            "round": rnd, "strategy": strategy.name, "clients": int(train_metrics["clients"]),
            "density_mean": round(strategy.density_mean(), 6),
            "bytes_up": meter.round_total(rnd, "up"), "bytes_down": meter.round_total(rnd, "down"),
            "bytes_down_broadcast": meter.broadcast.get(rnd, 0),
            "values_bytes_up": meter.round_total(rnd, "up", "values"),
            "values_bytes_down": meter.round_total(rnd, "down", "values"),
            "pruned_clients": int(round(train_metrics.get("pruned", 0.0) * train_metrics["clients"])),
            "failed_clients": failed,
        }
        if failed:
            progress.log(f"round {rnd}: {failed} client(s) failed: {strategy.failures[failures_before:]}")
        if rnd % cfg.evaluation.every == 0 or rnd == cfg.rounds:
            eval_messages = list(strategy.configure_evaluate(rnd, None, None, grid))
            eval_bytes = 0
            for msg in eval_messages:
                eval_bytes += content_bytes(msg.content)
                strategy.note_sent(msg)
            eval_replies = list(grid.send_and_receive(eval_messages))
            eval_bytes += sum(content_bytes(r.content) for r in eval_replies if not r.has_error())
            results = strategy.evaluation_results(eval_replies)
            accs = {pid: m["test-acc"] for pid, m in results.items()}
            deployed = [m["deployed-acc"] for m in results.values() if "deployed-acc" in m]
            row["deployed_acc_mean"] = round(float(np.mean(deployed)), 6) if deployed else None
            run.last_acc.update(accs)
            for pid, acc in accs.items():
                run.best_acc[pid] = max(acc, run.best_acc.get(pid, 0.0))
            row["personalized_acc_mean"] = round(float(np.mean(list(accs.values()))), 6) if accs else None
            row["paper_metric"] = round(float(np.mean(list(run.best_acc.values()))), 6) if run.best_acc else None
            row["eval_bytes"] = eval_bytes
            if cfg.evaluation.global_model:
                template.load_state_dict(strategy.global_model_state())
                row["global_acc"] = round(evaluate(template, test)[1], 6)
        row["wall_s"] = round(time.perf_counter() - start, 3)
        rounds_log.append(row)
        run.rows.append(row)
        acc = row.get("personalized_acc_mean")
        progress.step(
            f"{strategy.name} round {rnd}/{cfg.rounds}: {row['clients']} clients"
            + (f", personalised acc {100 * acc:.2f}%" if acc is not None else "")
            + (f", global acc {100 * row['global_acc']:.2f}%" if row.get("global_acc") is not None else "")
            + f", density {row['density_mean']:.3f}, up {row['bytes_up'] / 1e6:.3f} MB, "
            f"down {row['bytes_down'] / 1e6:.3f} MB"
        )
    return run


def _strategy_summary(run: StrategyRun, strategy: FederatedStrategy) -> dict:
    meter = run.meter
    last_eval = next(r for r in reversed(run.rows) if r.get("personalized_acc_mean") is not None)
    return {
        "rounds": len(run.rows),
        "personalized_acc_final": last_eval["personalized_acc_mean"],
        "personalized_acc_std": float(np.std(list(run.last_acc.values()))) if run.last_acc else None,
        "paper_metric_best_of_rounds": last_eval["paper_metric"],
        "global_acc_final": last_eval.get("global_acc"),
        "deployed_acc_final": last_eval.get("deployed_acc_mean"),
        "density_mean_final": strategy.density_mean(),
        "bytes_up": meter.total("up"), "bytes_down": meter.total("down"),
        "bytes_down_broadcast": sum(meter.broadcast.values()),
        "values_bytes_up": meter.total("up", "values"), "values_bytes_down": meter.total("down", "values"),
        "wall_s": round(sum(r["wall_s"] for r in run.rows), 2),
        "failures": strategy.failures,
    }


# ---- `flwr run .` entry point ------------------------------------------------------------------------------
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read `config` (a YAML path) and `out-dir` from the run config (pyproject's [tool.flwr.app.config])."""
    run_config = context.run_config
    cfg = load_federated_config(_resolve_config(str(run_config.get("config", "configs/default.yaml"))))
    if "num-rounds" in run_config and int(run_config["num-rounds"]) > 0:
        cfg.rounds = int(run_config["num-rounds"])
    out_dir = Path(str(run_config.get("out-dir", "runs/flwr")))
    stderr_log(f"results -> {out_dir.resolve()}")
    run_experiment(grid, cfg, out_dir)


def _resolve_config(path: str) -> str:
    """A relative config path: from the working directory if it is there, else from the app's root (the
    project, or Flower's installed copy of the app, which ships configs/*.yaml)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return str(candidate)
    in_app = Path(__file__).resolve().parents[1] / candidate
    return str(in_app if in_app.exists() else candidate)
