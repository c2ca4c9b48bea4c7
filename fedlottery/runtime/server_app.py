"""The Flower ServerApp: builds theta_0 and each strategy, runs the rounds, meters bytes, writes results.

Used by `flwr run .` (the `app` below reads the config path from the run config) and in-process by
`fedlottery run` (fedlottery.runtime.simulation). Each strategy in the config runs in turn on the same clients,
partition, model and theta_0; every round appends one row to DIR/rounds.csv as it ends.
"""
from __future__ import annotations

import errno
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedlottery.runs.checkpoint import CHECKPOINT_FILE, file_sizes, load_checkpoint, save_checkpoint, truncate_to
from fedlottery.comm import ByteMeter, CodecError, broadcast_bytes, content_bytes, values_bytes
from fedlottery.config import ConfigError, FederatedConfig, to_dict
from fedlottery.runtime.experiment import experiment_from_dict, load_experiment, resolve_config_path
from fedlottery.runtime.faults import is_marked_late
from fedlottery.data import describe, load_dataset, make_partitions
from fedlottery.errors import CheckpointError, ResultsWriteError, WorkersLost
from fedlottery.plain_state import to_plain
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names
from fedlottery.runs.tracking import Tracker
from fedlottery.schedule import draw_ids
from fedlottery.runs.results import CsvLog, Progress, partition_table, stderr_log, write_json
from fedlottery.training import evaluate
from strategies import get_strategy, strategy_specs
from strategies.base import FederatedStrategy, ServerSetup
from strategies.replies import one_line

ROUND_COLUMNS = [
    "round", "strategy", "seed", "clients", "sampled", "personalized_acc_mean", "evaluated_clients", "paper_metric",
    "global_acc", "deployed_acc_mean", "finetuned_acc_mean", "density_mean",
    "bytes_up", "bytes_down", "bytes_down_broadcast", "values_bytes_up", "values_bytes_down", "eval_bytes",
    "pruned_clients", "failed_train_clients", "failed_eval_clients", "wall_s", "eval_wall_s",
]
# `sampled`: the partition ids asked to train that round, space-separated (fedlottery.runs.results.sampled_ids).
# Columns added since rounds.csv was first written: a run resumed from an older checkpoint keeps its file's header
# (fedlottery.runs.results.CsvLog) and goes on without them, rather than mixing two schemas in one file.
LATER_ROUND_COLUMNS = ("sampled",)
CLIENT_COLUMNS = ["strategy", "seed", "partition_id", "final_acc", "best_acc", "density"]
CLIENT_STATE_DIR = "client_state"
# what a run writes into its directory; the command line refuses to replace any of it without --overwrite
RESULT_FILES = ("rounds.csv", "clients.csv", "summary.json", "failures.log", CHECKPOINT_FILE, CLIENT_STATE_DIR)
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


SIMULATED_NODES_GRACE = 10.0  # s: Flower's simulation registers its virtual SuperNodes before the ServerApp runs


def too_few_nodes(found: int, expected: int, simulated: bool) -> str:
    """Why a run cannot start with `found` SuperNodes, and how to give it `expected` (one per client)."""
    where = "Flower's simulation federation" if simulated else "the federation"
    return (f"{where} has {found} SuperNode(s), the config has partition.num_clients = {expected} (one SuperNode "
            f"per client): run `flwr run . <connection> --federation-config \"num-supernodes={expected}\" "
            "--stream`, or `fedlottery run CONFIG --entry flwr`, which sets it")


def setup_failure(node: int, reason: str) -> str:
    """The one line a run stops with when a node could not set up; a ClientApp that is not fedlottery's (it has
    no handler for the setup query) is named as such."""
    if "No query function registered" in reason:
        return (f"node {node}'s ClientApp does not answer fedlottery's setup query ({reason}): fedlottery's "
                "ServerApp drives fedlottery's ClientApp, `fedlottery.runtime.simulation:client_app` (pyproject's "
                "[tool.flwr.app.components]); bring your own model and data to it as plug-ins (docs/plugins.md)")
    return f"client setup failed on node {node}: {reason}"


def discover_clients(grid: Grid, cfg: FederatedConfig, state_dir: str, timeout: float = 600) -> dict[int, int]:
    """Send every node the experiment (and where client state lives); learn which partition each holds."""
    expected = cfg.partition.num_clients
    start = time.monotonic()
    simulated = "flwr.server.superlink.fleet.vce.vce_api" in sys.modules  # virtual SuperNodes: all there at once
    said = 0.0
    while len(nodes := list(grid.get_node_ids())) < expected:
        waited = time.monotonic() - start
        if waited > (SIMULATED_NODES_GRACE if simulated else timeout):
            raise RuntimeError(too_few_nodes(len(nodes), expected, simulated))
        if not simulated and waited - said >= 30:
            said = waited
            stderr_log(f"waiting for client nodes: {len(nodes)} of {expected} connected ({waited:.0f} s)")
        time.sleep(0.5)
    config = ConfigRecord({"experiment": json.dumps(to_dict(cfg)), "state-dir": state_dir})
    messages = [Message(RecordDict({"config": config}), node, MessageType.QUERY) for node in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(setup_failure(reply.metadata.src_node_id, one_line(reply.error.reason)))
        pid = int(reply.content["metrics"]["partition-id"])
        if pid in node_of:
            raise RuntimeError(f"two nodes claim partition {pid}: check num-supernodes and partition.num_clients")
        node_of[pid] = reply.metadata.src_node_id
    missing = sorted(set(range(expected)) - set(node_of))
    if missing:
        raise RuntimeError(f"no node holds partitions {missing[:10]}: num-supernodes must equal partition.num_clients")
    return node_of


def run_experiment(grid: Grid, cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None] = stderr_log,
                   resume: bool = False, client_state: str = "directory") -> dict:
    """Run every configured strategy for cfg.rounds rounds; returns the summary also written to summary.json.

    resume: go on from out_dir's checkpoint (same config), truncating result files back to it.
    client_state: "directory" keeps client state in out_dir/client_state (simulations: durable, off the
    driver); "context" in each SuperNode's own Context (a real deployment, one SuperNode per device).
    A write that fails (disk full, permission lost, directory removed) stops the run with a ResultsWriteError
    in one line saying where the checkpoint stands and that --resume goes on from it.
    """
    try:
        return _run_experiment(grid, cfg, out_dir, log, resume, client_state)
    except OSError as err:
        if isinstance(err, ResultsWriteError) or err.errno not in WRITE_ERRNOS:
            raise
        raise results_write_error(Path(out_dir), err) from None


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO,
                errno.EFBIG}
_CLIENT_WRITE_FAILED = re.compile(r"\[Errno (28|122|30)\]")  # ENOSPC, EDQUOT, EROFS in a client's error reply


def results_write_error(out_dir: Path, err: OSError) -> ResultsWriteError:
    """One line: what failed, where the results on disk stand, and how to go on."""
    what = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    try:
        saved = load_checkpoint(out_dir)
        name = saved["strategy"]["name"] if saved.get("strategy") else f"strategy #{saved['strategy_index']}"
        stands = (f"the files on disk are consistent up to the checkpoint after {name} round {saved['round']}; "
                  "fix the cause (free space, permissions) and go on with the same command plus --resume")
    except CheckpointError:
        stands = ("no checkpoint was written yet, so there is nothing to resume: fix the cause and run again "
                  "with --overwrite")
    return ResultsWriteError(f"writing the run's files in {out_dir} failed: {what}{where}; {stands}")


def _run_experiment(grid: Grid, cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None], resume: bool,
                    client_state: str) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = resumable_checkpoint(out_dir, cfg) if resume else None
    if checkpoint is not None:
        truncate_to(out_dir, checkpoint["files"])
        log(f"resuming {out_dir}: {checkpoint['strategy']['name'] if checkpoint.get('strategy') else 'next'} "
            f"strategy #{checkpoint['strategy_index'] + 1}, after round {checkpoint['round']}")
    exp = _prepare(grid, cfg, out_dir, log, client_state, checkpoint)
    summary: dict = checkpoint["summary"] if checkpoint else {"strategies": {}}
    summary["config"] = to_dict(cfg)
    try:
        _run_strategies(grid, exp, summary, checkpoint)
    finally:
        exp.tracker.close()
    return summary


def _run_strategies(grid, exp: Experiment, summary: dict, checkpoint: dict | None) -> None:
    """Each configured strategy in turn (those a resumed run finished already skipped)."""
    cfg, out_dir = exp.cfg, exp.out_dir
    for index, spec in enumerate(strategy_specs(cfg)):
        if checkpoint is not None and index < checkpoint["strategy_index"]:
            continue
        name = spec.label  # what rows, tables, messages and client state call it
        strategy = get_strategy(spec.name)(ServerSetup(**{**exp.setup, "comm": spec.comm, "label": name}),
                                           spec.options)
        run, first_round = StrategyRun(name), 1
        if checkpoint is not None and index == checkpoint["strategy_index"] and checkpoint["strategy"]:
            strategy.load_state_dict(checkpoint["strategy"]["state"])
            run, first_round = StrategyRun.from_state_dict(checkpoint["run"]), checkpoint["round"] + 1
        strategy.summary()
        _run_strategy(grid, exp, strategy, run, first_round, index, summary)
        for pid in sorted(exp.setup["node_of"]):
            exp.clients_log.append({"strategy": name, "seed": cfg.seed, "partition_id": pid, "final_acc": run.last_acc.get(pid),
                                    "best_acc": run.best_acc.get(pid), "density": strategy.masks.density(pid)})
        summary["strategies"][name] = _strategy_summary(run, strategy, cfg.partition.num_clients)
        write_json(out_dir / "summary.json", summary)
        _checkpoint(exp, index + 1, 0, None, None, summary)


def resumable_checkpoint(out_dir: Path, cfg: FederatedConfig) -> dict:
    """out_dir's checkpoint, if it belongs to this very config (else a ConfigError naming what differs)."""
    checkpoint = load_checkpoint(out_dir)
    try:  # through the loader, so a setting added since the checkpoint was written takes its default
        saved = to_dict(experiment_from_dict(checkpoint["config"]))
    except ConfigError as err:
        raise CheckpointError(f"{out_dir / CHECKPOINT_FILE}: its config no longer loads ({err}); start afresh with "
                              "--overwrite") from None
    now = to_dict(cfg)
    saved["simulation"]["round_timeout"] = now["simulation"]["round_timeout"]  # a hang guard: no result depends on it
    if saved != now:
        keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(f"--resume: the config differs from the checkpointed run's in {', '.join(keys)}; "
                          "resume with the same config, or start afresh with --overwrite")
    return checkpoint


def _prepare(grid, cfg: FederatedConfig, out_dir: Path, log, client_state: str, checkpoint) -> Experiment:
    random.seed(cfg.seed)
    dataset = load_dataset(cfg.data)
    splits = make_partitions(dataset, cfg.partition, cfg.seed)
    log(partition_table(describe(splits)))
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    state_dir = str((out_dir / CLIENT_STATE_DIR).resolve()) if client_state == "directory" else ""
    if checkpoint is None and state_dir:
        _refuse_earlier_client_state(Path(state_dir))
    node_of = discover_clients(grid, cfg, state_dir)
    setup = dict(theta0=clone_state(template), prunable=prunable_names(template), node_of=node_of,
                 clients_per_round=cfg.clients_per_round, seed=cfg.seed, local=cfg.local,
                 batchnorm=batchnorm_names(template), comm=cfg.comm, head=head_names(template),
                 train_sizes={pid: len(split.train) for pid, split in enumerate(splits)},
                 test_sizes={pid: len(split.test) for pid, split in enumerate(splits)}, rounds=cfg.rounds)
    progress = Progress(cfg.rounds * len(cfg.strategies), log)
    if checkpoint is not None:
        progress.skip(checkpoint["strategy_index"] * cfg.rounds + checkpoint["round"])
    rounds_log = CsvLog(out_dir / "rounds.csv", ROUND_COLUMNS, optional=LATER_ROUND_COLUMNS if checkpoint else ())
    return Experiment(cfg, out_dir, dataset, template, setup, rounds_log,
                      CsvLog(out_dir / "clients.csv", CLIENT_COLUMNS), progress,
                      Tracker(cfg.tracking.tensorboard, cfg.seed))


def _refuse_earlier_client_state(state_dir: Path) -> None:
    """A fresh run must not start on an earlier run's client state, and must not delete it either: only the
    command line's --overwrite removes results (once the run is known to start)."""
    if state_dir.is_dir() and any(state_dir.iterdir()):
        raise ConfigError(f"{state_dir} holds client state from an earlier run; pass --overwrite to replace that "
                          "run, --resume to go on with it, or give another --out")


def _checkpoint(exp: Experiment, index: int, rnd: int, strategy: FederatedStrategy | None, run, summary) -> None:
    if exp.cfg.checkpoint.every == 0:
        return
    if strategy is not None:
        strategy.mark_checkpoint()
    save_checkpoint(exp.out_dir, {
        "config": to_dict(exp.cfg), "strategy_index": index, "round": rnd,
        "run": None if run is None else run.state_dict(), "summary": to_plain(summary, "summary"),
        "strategy": None if strategy is None else {"name": strategy.label, "state": strategy.state_dict()},
        "files": file_sizes(exp.out_dir, ("rounds.csv", "clients.csv", "failures.log")),
    })


def _send(grid: Grid, messages: list, timeout: float, rnd: int, phase: str, exp: Experiment, run: StrategyRun
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


def _run_strategy(grid, exp: Experiment, strategy: FederatedStrategy, run: StrategyRun, first_round: int,
                  index: int, summary: dict) -> None:
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
            _checkpoint(exp, index, rnd, strategy, run, summary)


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
    replies = _send(grid, messages, exp.cfg.simulation.round_timeout, rnd, "training", exp, run)
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
        replies = _send(grid, messages, evaluation_timeout(exp.cfg, len(messages)), rnd, "evaluation", exp, run)
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
        row["global_acc"] = round(evaluate(exp.template, (exp.dataset.x_test, exp.dataset.y_test))[1], 6)
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


def _strategy_summary(run: StrategyRun, strategy: FederatedStrategy, num_clients: int) -> dict:
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


# ---- `flwr run .` entry point ------------------------------------------------------------------------------
app = ServerApp()


def experiment_from_run_config(run_config) -> FederatedConfig:
    """The experiment a `flwr run` asks for: the YAML file `config`, then the run config's overrides, each
    settable with `--run-config` (pyproject's [tool.flwr.app.config] lists them with their "unset" values):
    `set` (--set assignments, separated by ";"), `strategies` (comma-separated names or variant labels),
    `num-rounds`, `seed`, `clients-per-round`."""
    settings = [s.strip() for s in str(run_config.get("set", "")).split(";") if s.strip()]
    seed, per_round = int(run_config.get("seed", -1)), int(run_config.get("clients-per-round", 0))
    settings += [f"seed={seed}"] if seed >= 0 else []
    settings += [f"clients_per_round={per_round}"] if per_round > 0 else []
    names = [n.strip() for n in str(run_config.get("strategies", "")).split(",") if n.strip()]
    rounds = int(run_config.get("num-rounds", 0))
    return load_experiment(resolve_config_path(str(run_config.get("config", "configs/default.yaml"))),
                           rounds=rounds if rounds > 0 else None, strategies=names or None, settings=settings)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The `flwr run` entry: read `config` (a YAML path), `num-rounds`, `out-dir`, `resume` and `client-state` from
    the run config (pyproject's [tool.flwr.app.config], overridden with `--run-config`).

    Under Flower's simulation runtime (simulations/flwr_run.sh) Flower's Ray backend has started Ray before this
    runs: the config's `simulation` section cannot choose it any more (the federation config and $RAY_ADDRESS do),
    and the one-pass delivery loop must already be in place (`fedlottery.runtime.simulation:client_app` installs it)."""
    in_simulation_runtime = "flwr.server.superlink.fleet.vce.vce_api" in sys.modules  # (checked before any import)
    run_config = context.run_config
    cfg = experiment_from_run_config(run_config)
    out_dir = Path(str(run_config.get("out-dir", "runs/flwr")))
    stderr_log(f"results -> {out_dir.resolve()}")
    if in_simulation_runtime:
        import threading

        from fedlottery.runtime import delivery

        def report_delivery_loop() -> None:  # Flower starts its delivery thread after loading the ClientApp
            while not (loops := [t for t in threading.enumerate()
                                 if getattr(getattr(t, "_target", None), "__name__", "") == "add_messages_to_queue"]):
                time.sleep(0.2)
            if getattr(loops[0], "_target", None) is delivery.add_messages_to_queue:
                stderr_log("message delivery: fedlottery.runtime.delivery (one pass over the messages per sweep)")
            else:
                stderr_log("warning: message delivery: Flower's own loop (O(nodes x messages) per sweep); load the "
                           "ClientApp as fedlottery.runtime.simulation:client_app")

        threading.Thread(target=report_delivery_loop, name="fedlottery-delivery-check", daemon=True).start()
        if cfg.simulation.ray_address:
            stderr_log(f"warning: simulation.ray_address {cfg.simulation.ray_address!r} is not used under `flwr "
                       "run`: Flower's backend started Ray before the ServerApp read the config; set RAY_ADDRESS")
    resume, client_state = bool(run_config.get("resume", False)), str(run_config.get("client-state", "context"))
    if resume and client_state != "directory":
        raise ConfigError('resume=true needs client-state="directory" (a SuperNode\'s Context does not outlive its '
                          "run): use `fedlottery run CONFIG --out DIR --resume --entry flwr`")
    run_experiment(grid, cfg, out_dir, resume=resume, client_state=client_state)

