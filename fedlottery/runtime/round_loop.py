"""The round loop: one strategy's rounds, from the messages it configures to the row each round writes.

The strategy decides what each client is sent and what its replies make (configure_train / aggregate_train,
evaluation_messages / evaluation_results: strategies/base.py); this module owns everything around that, in one
place: sending and waiting (with the hang guard and lost-worker checks), metering every payload, evaluating,
logging failures and notices, the round's row in rounds.csv, and the strategy's summary. The server app
(fedlottery/runtime/server_app.py) sets up the experiment and runs each strategy's loop in turn.
"""
from __future__ import annotations

import errno
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedlottery.comm import ByteMeter, CodecError, broadcast_bytes, content_bytes, values_bytes
from fedlottery.config import FederatedConfig
from fedlottery.errors import WorkersLost
from fedlottery.runs.results import CsvLog, Progress
from fedlottery.runs.tracking import Tracker
from fedlottery.runtime.faults import is_marked_late
from fedlottery.schedule import draw_ids
from fedlottery.training import evaluate
from strategies.base import FederatedStrategy
from strategies.replies import one_line


_RAY_EXCEPTION = re.compile(r"ray\.exceptions\.(\w+)")  # in the reason of a reply whose worker Ray lost
_CLASS_PREFIX = re.compile(r"^<?class '[\w.]+'>:<'?")  # Flower's "<class 'X'>:<'message'>" wrapping
EVAL_CHUNK = 500  # clients per evaluation batch: bounds the driver's memory whatever the population


@dataclass
class StrategyRun:
    """Bookkeeping for one strategy's rounds: per-client accuracies and the best each ever reached."""

    name: str
    meter: ByteMeter = field(default_factory=ByteMeter)
    last_acc: dict[int, float] = field(default_factory=dict)  # the last evaluation's, evaluated clients only
    best_acc: dict[int, float] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    hang_guard_drops: int = 0  # clients dropped by the wall-clock round deadline: the run depends on timing

    def state_dict(self) -> dict:
        return {"name": self.name, "meter": self.meter.state_dict(), "last_acc": dict(self.last_acc),
                "best_acc": dict(self.best_acc), "rows": [dict(r) for r in self.rows],
                "hang_guard_drops": self.hang_guard_drops}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StrategyRun":
        return cls(state["name"], ByteMeter.from_state_dict(state["meter"]), dict(state["last_acc"]),
                   dict(state["best_acc"]), [dict(r) for r in state["rows"]], int(state.get("hang_guard_drops", 0)))


@dataclass
class Experiment:
    """What every strategy of a run shares: data, partitions, theta_0, the clients' nodes and the logs."""

    cfg: FederatedConfig
    out_dir: Path
    dataset: object
    template: torch.nn.Module
    setup: dict  # ServerSetup fields shared by every strategy
    rounds_log: CsvLog
    clients_log: CsvLog
    progress: Progress
    tracker: Tracker


_CLIENT_WRITE_FAILED = re.compile(r"\[Errno (28|122|30)\]")  # ENOSPC, EDQUOT, EROFS in a client's error reply


def send(grid: Grid, messages: list, timeout: float, rnd: int, phase: str, exp: Experiment, run: StrategyRun
          ) -> list:
    """Send the round's messages and wait for replies. A reply marked late (faults.late, in simulated time) is
    dropped as one that missed the deadline, deterministically. The wall-clock `timeout` is only a hang guard:
    a client it drops is counted on `run` and flagged (`_hang_guard`). A client whose worker Ray lost stops the
    run here, before the round is used (see `lost_worker`)."""
    received = list(grid.send_and_receive(messages, timeout=timeout))
    _hang_guard(exp, run, rnd, phase, len(messages) - len(received))
    replies = [r for r in received if not is_marked_late(r)]
    for reply in replies:  # a client that could not write its state must not pass as that client's failure
        if reply.has_error() and _CLIENT_WRITE_FAILED.search(str(reply.error.reason)):
            raise OSError(errno.ENOSPC, f"round {rnd} {phase}: a client could not write its state: "
                                        f"{one_line(str(reply.error.reason))}")
    lost = [reason for reason in map(lost_worker, replies) if reason]
    if lost:
        raise WorkersLost(
            f"round {rnd} {phase}: Ray lost the worker of {len(lost)} of {len(messages)} client(s) "
            f"({lost[0][:300]}); the run stopped before using round {rnd}, so its checkpoint is intact. Free what "
            "was short (memory: fewer runs at once, or a smaller simulation.actors) and go on with the same "
            "command plus --resume")
    return replies


def _hang_guard(exp: Experiment, run: StrategyRun, rnd: int, phase: str, dropped: int) -> None:
    """Clients the wall-clock deadline dropped make the run's result depend on this machine's speed and load:
    counted (summary.json's `hang_guard_drops`, the final table) and said on the progress log."""
    if dropped <= 0:
        return
    run.hang_guard_drops += dropped
    exp.progress.warn(f"{run.name} round {rnd} {phase}: {dropped} client(s) dropped by the hang guard "
                     f"(simulation.round_timeout {exp.cfg.simulation.round_timeout:g} s): this run's results now "
                     "depend on the machine's timing; raise simulation.round_timeout if the clients were only slow")


def lost_worker(reply: Message) -> str | None:
    """Why Ray lost the worker that should have run this reply's client, or None. A ClientApp's own exception
    arrives as CLIENT_APP_RAISED_EXCEPTION and is that client's failure (dropped, counted, the run goes on);
    a Ray exception outside the app (an actor killed for memory, a crashed worker, an empty actor pool) means
    the simulation itself is broken: every later round would lose clients to it, silently changing the run."""
    if not reply.has_error() or reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION:
        return None
    reason = str(reply.error.reason)
    found = _RAY_EXCEPTION.search(reason)
    if found is None and "actor pool is empty" not in reason:
        return None
    detail = _CLASS_PREFIX.sub("", one_line(reason))
    return (f"{found.group(1)}: " if found else "") + detail


def run_strategy(grid, exp: Experiment, strategy: FederatedStrategy, run: StrategyRun, first_round: int,
                 checkpoint: Callable[[int, FederatedStrategy, StrategyRun], None]) -> None:
    """Rounds first_round..cfg.rounds of one strategy: train (and, when due, evaluate) each round, write its row,
    and call `checkpoint(round, strategy, run)` when the config's checkpoint interval says so."""
    cfg = exp.cfg
    for rnd in range(first_round, cfg.rounds + 1):
        start = time.perf_counter()
        row = _train_round(grid, exp, strategy, run, rnd)
        if rnd % cfg.evaluation.every == 0 or rnd == cfg.rounds:
            evaluation_start = time.perf_counter()
            row.update(_evaluate_round(grid, exp, strategy, run, rnd))
            row["eval_wall_s"] = round(time.perf_counter() - evaluation_start, 3)
        row["wall_s"] = round(time.perf_counter() - start, 3)
        exp.rounds_log.append(row)
        exp.tracker.log(row)
        run.rows.append(row)
        exp.progress.step(_progress_line(strategy.label, rnd, cfg, row))
        if cfg.checkpoint.every and (rnd % cfg.checkpoint.every == 0 or rnd == cfg.rounds):
            checkpoint(rnd, strategy, run)


def _train_round(grid, exp: Experiment, strategy: FederatedStrategy, run: StrategyRun, rnd: int) -> dict:
    meter, prunable = run.meter, set(strategy.setup.prunable)
    counted = strategy.communicates  # False: a real deployment sends nothing at all (local training only)
    messages = list(strategy.configure_train(rnd, None, None, grid))
    pid_of = {id(m): int(m.content["config"]["partition-id"]) for m in messages}
    for msg in messages:
        if counted:
            meter.add(rnd, pid_of[id(msg)], "down", content_bytes(msg.content),  # relayed models count too
                      sum(values_bytes(record, prunable) for record in msg.content.array_records.values()))
    meter.add_broadcast(rnd, broadcast_bytes(messages) if counted else 0)
    replies = send(grid, messages, exp.cfg.simulation.round_timeout, rnd, "training", exp, run)
    sent_ids = {m.metadata.message_id: pid_of[id(m)] for m in messages}
    for reply in sorted(replies, key=lambda r: sent_ids.get(r.metadata.reply_to_message_id, -1)):
        if counted and not reply.has_error() and "model" in reply.content:
            meter.add(rnd, sent_ids.get(reply.metadata.reply_to_message_id, -1), "up", content_bytes(reply.content),
                      _safe_values_bytes(reply.content["model"], prunable))
    _, train_metrics = strategy.aggregate_train(rnd, replies)
    accepted = int(train_metrics["clients"])
    _log_failures(exp, strategy)
    for notice in strategy.notices:
        exp.progress.warn(notice)
    strategy.notices.clear()
    return {
        "round": rnd, "strategy": strategy.label, "seed": exp.cfg.seed, "clients": accepted,
        "sampled": " ".join(str(pid) for pid in sorted(pid_of.values())),  # asked, whether or not they replied
        "density_mean": round(strategy.density_mean(), 6),
        "bytes_up": meter.round_total(rnd, "up"), "bytes_down": meter.round_total(rnd, "down"),
        "bytes_down_broadcast": meter.broadcast.get(rnd, 0),
        "values_bytes_up": meter.round_total(rnd, "up", "values"),
        "values_bytes_down": meter.round_total(rnd, "down", "values"),
        "pruned_clients": int(round(train_metrics.get("pruned", 0.0) * accepted)),
        "failed_train_clients": len(messages) - accepted,
    }


def _safe_values_bytes(record, prunable: set[str]) -> int:
    """The papers' accounting of an upload; 0 for bytes too broken to read (the reply is rejected anyway)."""
    try:
        return values_bytes(record, prunable)
    except (CodecError, ValueError, TypeError):
        return 0


def _evaluate_round(grid, exp: Experiment, strategy: FederatedStrategy, run: StrategyRun, rnd: int) -> dict:
    """Every client's personalised model on its whole local test set, EVAL_CHUNK clients at a time (the
    driver never holds more messages than that); failures counted, never hidden."""
    pids = evaluation_clients(exp.cfg, sorted(strategy.setup.node_of), rnd)
    results: dict[int, dict[str, float]] = {}
    eval_bytes = 0
    for start in range(0, len(pids), EVAL_CHUNK):
        messages = strategy.evaluation_messages(rnd, pids[start:start + EVAL_CHUNK])
        eval_bytes += sum(content_bytes(m.content) for m in messages)
        replies = send(grid, messages, evaluation_timeout(exp.cfg, len(messages)), rnd, "evaluation", exp, run)
        eval_bytes += sum(content_bytes(r.content) for r in replies if not r.has_error())
        results.update(strategy.evaluation_results(rnd, replies))
        _log_failures(exp, strategy)
    accs = {pid: m["test-acc"] for pid, m in results.items()}
    deployed = [results[pid]["deployed-acc"] for pid in sorted(results) if "deployed-acc" in results[pid]]
    finetuned = [results[pid]["finetuned-acc"] for pid in sorted(results) if "finetuned-acc" in results[pid]]
    run.last_acc = dict(accs)
    for pid, acc in accs.items():
        run.best_acc[pid] = max(acc, run.best_acc.get(pid, 0.0))
    row = {
        "personalized_acc_mean": _mean(accs[pid] for pid in sorted(accs)),
        "evaluated_clients": len(accs), "failed_eval_clients": len(pids) - len(accs),
        "deployed_acc_mean": _mean(deployed), "finetuned_acc_mean": _mean(finetuned),
        "paper_metric": _mean(run.best_acc[pid] for pid in sorted(run.best_acc)),
        "eval_bytes": eval_bytes,
    }
    if exp.cfg.evaluation.global_model:
        exp.template.load_state_dict(strategy.global_model_state())
        row["global_acc"] = round(evaluate(exp.template, (exp.dataset.inputs("test"), exp.dataset.y_test))[1], 6)
    return row


def evaluation_clients(cfg: FederatedConfig, pids: list[int], rnd: int) -> list[int]:
    """The clients an evaluation at round rnd tests: all of them, or before the last round a seeded sample of
    `evaluation.sample` (drawn from the seed and the round only, so every strategy of a run, and a resumed
    run, tests the same clients at the same round: paired comparisons stay paired)."""
    k = cfg.evaluation.sample
    if k == 0 or k >= len(pids) or rnd >= cfg.rounds:
        return list(pids)
    return draw_ids(cfg.seed, rnd, "evaluation-sample", pids, k)


def evaluation_timeout(cfg: FederatedConfig, messages: int) -> float:
    """An evaluation asks every client, not clients_per_round: its deadline is the round's, scaled by how many
    rounds' worth of clients it asks (evaluating costs a client less than training, so this is generous)."""
    return cfg.simulation.round_timeout * max(1, math.ceil(messages / cfg.clients_per_round))


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 6) if values else None


def _log_failures(exp: Experiment, strategy: FederatedStrategy) -> None:
    """One line per failure on the progress log; the full text in the run's failures.log."""
    if not strategy.round_failures:
        return
    with (exp.out_dir / "failures.log").open("a") as f:
        for failure in strategy.round_failures:
            f.write(f"[{strategy.label}] {failure.line()}\n")
            if failure.detail != failure.cause:
                f.write("    " + failure.detail.replace("\n", "\n    ").rstrip() + "\n")
    lines = [f.line() for f in strategy.round_failures]
    exp.progress.warn(f"{strategy.label}: {len(lines)} client(s) failed: " + "; ".join(lines[:3])
                     + (f"; ... (see {exp.out_dir / 'failures.log'})" if len(lines) > 3 else ""))


def _progress_line(name: str, rnd: int, cfg: FederatedConfig, row: dict) -> str:
    acc, evaluated = row.get("personalized_acc_mean"), row.get("evaluated_clients")
    partial = f" (over {evaluated} of {cfg.partition.num_clients} clients)" if evaluated is not None and \
        evaluated < cfg.partition.num_clients else ""
    return (f"{name} round {rnd}/{cfg.rounds}: {row['clients']} clients"
            + (f", personalised acc {100 * acc:.2f}%{partial}" if acc is not None else "")
            + (f", global acc {100 * row['global_acc']:.2f}%" if row.get("global_acc") is not None else "")
            + f", density {row['density_mean']:.3f}, up {row['bytes_up'] / 1e6:.3f} MB, "
            f"down {row['bytes_down'] / 1e6:.3f} MB")


def strategy_summary(run: StrategyRun, strategy: FederatedStrategy, num_clients: int) -> dict:
    meter = run.meter
    last_eval = next((r for r in reversed(run.rows) if r.get("evaluated_clients") is not None), {})
    final = [run.last_acc[pid] for pid in sorted(run.last_acc)]
    return {
        "rounds": len(run.rows),
        "personalized_acc_final": last_eval.get("personalized_acc_mean"),
        "personalized_acc_std": float(np.std(final)) if final else None,
        "evaluated_clients_final": last_eval.get("evaluated_clients", 0),
        "clients": num_clients,
        "paper_metric_best_of_rounds": last_eval.get("paper_metric"),
        "global_acc_final": last_eval.get("global_acc"),
        "deployed_acc_final": last_eval.get("deployed_acc_mean"),
        "finetuned_acc_final": last_eval.get("finetuned_acc_mean"),
        "density_mean_final": strategy.density_mean(),
        "server_mask_bytes_per_client": round((strategy.masks.packed_bytes() + strategy.client_holds.packed_bytes())
                                              / num_clients, 1),
        "bytes_up": meter.total("up"), "bytes_down": meter.total("down"),
        "bytes_down_broadcast": sum(meter.broadcast.values()),
        "values_bytes_up": meter.total("up", "values"), "values_bytes_down": meter.total("down", "values"),
        "failed_train_clients": sum(r["failed_train_clients"] for r in run.rows),
        "failed_eval_clients": sum(r.get("failed_eval_clients") or 0 for r in run.rows),
        "wall_s": round(sum(r["wall_s"] for r in run.rows), 2),
        "hang_guard_drops": run.hang_guard_drops,  # > 0: the result depends on this machine's timing
        "failures": strategy.failures,
    }
