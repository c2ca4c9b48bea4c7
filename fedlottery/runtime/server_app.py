"""The Flower ServerApp: builds theta_0 and each strategy, runs each strategy's round loop, writes results.

Used by `flwr run .` (the `app` below reads the config path from the run config) and in-process by
`fedlottery run` (fedlottery.runtime.simulation). Each strategy in the config runs in turn on the same clients,
partition, model and theta_0 (fedlottery.runtime.round_loop runs its rounds and writes one row to DIR/rounds.csv
as each ends); this module finds the clients, checkpoints, resumes and writes the summary.
"""
from __future__ import annotations

import errno
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlottery.runs.checkpoint import CHECKPOINT_FILE, file_sizes, load_checkpoint, save_checkpoint, truncate_to
from fedlottery.config import ConfigError, FederatedConfig, to_dict
from fedlottery.runtime.experiment import experiment_from_dict, load_experiment, resolve_config_path
from fedlottery.runtime.round_loop import Experiment, StrategyRun, run_strategy, strategy_summary
from fedlottery.data import describe, load_dataset, make_partitions
from fedlottery.errors import CheckpointError, ResultsWriteError
from fedlottery.plain_state import to_plain
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names
from fedlottery.runs.tracking import Tracker
from fedlottery.runs.results import (LATER_ROUND_COLUMNS, ROUND_COLUMNS, CsvLog, Progress, partition_table, stderr_log,
                                     write_json)
from strategies import get_strategy, strategy_specs
from strategies.base import FederatedStrategy, ServerSetup
from strategies.replies import one_line

CLIENT_COLUMNS = ["strategy", "seed", "partition_id", "final_acc", "best_acc", "density"]
CLIENT_STATE_DIR = "client_state"
# what a run writes into its directory; the command line refuses to replace any of it without --overwrite
RESULT_FILES = ("rounds.csv", "clients.csv", "summary.json", "failures.log", CHECKPOINT_FILE, CLIENT_STATE_DIR)


def in_simulation_runtime() -> bool:
    """Whether this ServerApp runs inside Flower's simulation runtime (its engine module is loaded)."""
    return "flwr.server.superlink.fleet.vce.vce_api" in sys.modules


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
    simulated = in_simulation_runtime()  # virtual SuperNodes: all there at once
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
        run_strategy(grid, exp, strategy, run, first_round,
                     lambda rnd, strategy, run, index=index: _checkpoint(exp, index, rnd, strategy, run, summary))
        for pid in sorted(exp.setup["node_of"]):
            exp.clients_log.append({"strategy": name, "seed": cfg.seed, "partition_id": pid, "final_acc": run.last_acc.get(pid),
                                    "best_acc": run.best_acc.get(pid), "density": strategy.masks.density(pid)})
        summary["strategies"][name] = strategy_summary(run, strategy, cfg.partition.num_clients)
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
    simulation_runtime = in_simulation_runtime()  # (checked before any import)
    run_config = context.run_config
    cfg = experiment_from_run_config(run_config)
    out_dir = Path(str(run_config.get("out-dir", "runs/flwr")))
    stderr_log(f"results -> {out_dir.resolve()}")
    if simulation_runtime:
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

