"""Federated runs on Flower's simulation runtime (Ray backend, one supernode per client), in this process.

Ray placement comes from the config: `simulation.num_cpus` / `num_gpus` per client actor decide how many
run at once; `simulation.ray_address` (or $RAY_ADDRESS) joins an existing Ray cluster instead of starting one.

Which Flower entry `fedlottery run` uses, and why (Flower 1.41)
---------------------------------------------------------------
Flower 1.41 supports one way to start a simulation: `flwr run <app> <connection>`. For a local connection
(address ":local:") the CLI starts a SuperLink daemon, which starts a SuperExec, which starts a
`flwr-simulation` process; that process pulls the run (a FAB of the project) through the SuperLink's Runtime
API (`flwr.simulation.run_simulation_process`) and runs the simulation runtime
(`flwr.simulation.run_simulation._run_simulation`: ServerApp thread + `vce_api` + Ray backend).
`flwr.simulation.run_simulation` calls that same runtime in the calling process, and is deprecated: it logs a
banner on every call. Flower has no public, non-deprecated in-process entry (`run_simulation_process` is a
process main: it needs a SuperLink, installs its own signal handlers and ends in `sys.exit`).

`fedlottery run` keeps the in-process runtime through `run_simulation`, and drops exactly its deprecation
banner (`_without_deprecation_banner`), because going through `flwr run` (simulations/flwr_run.sh does; same
result files, tests/test_simulation_entry.py) costs what this command promises not to:
- start-up: a median 18 s more to the first round on the shared 2-core machine (6 paired runs, 11-25 s;
  docs/flower-ray.md, "Which Flower entry runs it"): the SuperLink daemon, building, uploading and installing
  the FAB, and a second Python process importing everything again;
- Ray: Flower's backend calls `ray.init()` in the `flwr-simulation` process before the ServerApp has read the
  config, so neither the private local instance nor the checked explicit cluster of `fedlottery.runtime.ray_runtime`
  (`start_ray`, run here before anything else) could be guaranteed (a bare `ray.init()` attaches to whichever
  cluster was started last on the machine);
- failures and Ctrl-C: `flwr run` exits 0 when the ServerApp fails (the status must be polled), and Ctrl-C
  would have to stop a run inside a detached daemon's process tree; here the ServerApp's exception is raised in
  this process once the runtime has shut down (the command line prints it as one line, non-zero exit) and Ctrl-C
  stops Ray within seconds.
When Flower removes `run_simulation`, its import in `run_federated` fails loudly; the replacement is the runtime
it wraps (`_run_simulation`, what `flwr run` itself executes) or `flwr run` with the costs above.

`flwr run .` loads the ClientApp as `fedlottery.runtime.simulation:client_app` (pyproject's [tool.flwr.app.components]):
Flower's simulation process loads the ClientApp in its main thread before it starts the delivery loop, so
resolving that attribute installs `fedlottery.runtime.delivery` there, in the process that runs `vce_api`,
deterministically (the ServerApp is loaded in a concurrent thread, too late to be sure).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

from fedlottery.config import FederatedConfig
from fedlottery.runtime.ray_runtime import ray_init_args, start_ray
from fedlottery.runs.results import read_json, stderr_log

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"

# Ray 2.55 warns once per driver (FutureWarning) that it will stop hiding GPUs from actors given num_gpus=0;
# "0" opts into that behaviour now. fedlottery picks CUDA in a client actor only when asked (device: auto with
# num_gpus > 0, or device: cuda), so nothing changes for a CPU actor. Local Ray workers inherit the variable
# from this process; on a cluster the nodes' own environment decides.
RAY_ACCEL_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
# Lines Ray copies from the client actors to this terminal that are noise on a normal run (the driver's log
# deduplicator drops lines matching this regex; read when `ray` is first imported): Flower logs a WARNING from
# every actor it stops at the end of every run.
ACTOR_NOISE = r"Manually terminating ClientAppActor"
VCE_API = "flwr.server.superlink.fleet.vce.vce_api"


def configure_output(verbosity: str = NORMAL) -> None:
    """What a person sees of Flower and Ray. Call before Ray (or Flower) is imported: both read these variables
    then, and Ray's local workers inherit them.

    quiet: only errors (Flower's log at ERROR in the driver and the actors, Python warnings off; the command
    prints its final table). normal: fedlottery's progress and Flower's INFO lines, no foreign warnings.
    verbose: Flower at DEBUG (with timestamps), Ray at INFO, every actor line."""
    os.environ.setdefault(RAY_ACCEL_ENV, "0")
    if verbosity == QUIET:
        os.environ["FLWR_LOG_LEVEL"] = "ERROR"
        os.environ["PYTHONWARNINGS"] = "ignore"
        warnings.simplefilter("ignore")
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", ACTOR_NOISE)
    elif verbosity == VERBOSE:
        os.environ["FLWR_LOG_LEVEL"] = "DEBUG"
    else:
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", ACTOR_NOISE)
    if "flwr.supercore.logger" in sys.modules:  # Flower already imported: its console handler read the env then
        _flower_console_level(verbosity)


def _flower_console_level(verbosity: str) -> None:
    from flwr.supercore.logger import update_console_handler

    if verbosity == QUIET:
        update_console_handler(level=logging.ERROR)
    elif verbosity == VERBOSE:
        update_console_handler(level=logging.DEBUG, timestamps=True)


def _quiet_log(message: str) -> None:
    """--quiet: progress and partition lines are dropped (errors reach the user as exceptions)."""


def backend_config(cfg: FederatedConfig) -> dict:
    resources = {"num_cpus": cfg.simulation.num_cpus, "num_gpus": cfg.simulation.num_gpus}
    return {"client_resources": resources, "init_args": ray_init_args(cfg)}  # private local Ray unless configured


class _DropFlowerNoise(logging.Filter):
    """Drops the one record `flwr.simulation.run_simulation` logs on every call (Flower 1.41:
    `warn_deprecated_feature("The `run_simulation` function is deprecated ...")`) and, with `tracebacks`, cuts
    what Flower's simulation engine logs for every client that raised (a line from the Ray backend, the remote
    exception with its traceback, then the traceback again) to one line, the cause; fedlottery's failures.log
    keeps the full text. Nothing else."""

    ENGINE = ("vce_api.py", "raybackend.py")

    def __init__(self, tracebacks: bool = False):
        super().__init__()
        self.tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if self.tracebacks and record.pathname.endswith(self.ENGINE) and record.levelno >= logging.ERROR:
            if message.startswith(("Traceback (most recent call last)", "An exception was raised when processing")):
                return False
            if "\n" in message.strip():  # the remote exception: its last line says what the client raised
                record.msg, record.args = "a client raised: " + message.strip().splitlines()[-1].strip(), None
            return True
        if not message.startswith("DEPRECATED FEATURE"):
            return True
        return not any("`run_simulation` function is deprecated" in str(arg) for arg in record.args or ())


@contextlib.contextmanager
def _without_deprecation_banner(tracebacks: bool = False) -> Iterator[None]:
    """Flower's console without its run_simulation banner (and, with `tracebacks`, its per-client tracebacks)."""
    banner_filter = _DropFlowerNoise(tracebacks)
    flower_logger = logging.getLogger("flwr")
    flower_logger.addFilter(banner_filter)
    try:
        yield
    finally:
        flower_logger.removeFilter(banner_filter)


def _describe_ray(cfg: FederatedConfig, log: Callable[[str], None]) -> None:
    """One line on where the clients run: how many client actors fit, on which Ray."""
    import ray

    from fedlottery.runtime.ray_runtime import cluster_address

    resources = ray.cluster_resources()
    sim = cfg.simulation
    actors = int(resources.get("CPU", 0) // sim.num_cpus) if sim.num_cpus else cfg.partition.num_clients
    if sim.num_gpus:
        actors = min(actors, int(resources.get("GPU", 0) // sim.num_gpus))
    actors = min(actors, cfg.partition.num_clients)
    address = cluster_address(cfg)
    where = f"the Ray cluster at {address}" if address else "a private local Ray instance"
    log(f"simulation: {cfg.partition.num_clients} clients on {actors} client actor(s) ({sim.num_cpus:g} CPU, "
        f"{sim.num_gpus:g} GPU each) in {where}; round 1 includes the actors' start-up")


def client_state_dir(out_dir: Path) -> str:
    """The run directory's client-state folder, as the ServerApp names it in its setup query."""
    from fedlottery.runtime.server_app import CLIENT_STATE_DIR

    return str((Path(out_dir) / CLIENT_STATE_DIR).resolve())


def run_federated(cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None] | None = None,
                  resume: bool = False, verbosity: str = NORMAL) -> dict:
    """Run the experiment through Flower's simulation runtime in this process; returns summary.json's content.

    resume: go on from the checkpoint in out_dir (see fedlottery.runs.checkpoint). Client state lives in
    out_dir/client_state, so it survives a kill and stays out of the driver's memory.
    verbosity: QUIET / NORMAL / VERBOSE (see `configure_output`, which the command line calls before Ray starts).
    An exception in the ServerApp is raised here once the runtime has shut down.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedlottery.runtime import delivery
    from fedlottery.runtime.client_app import app as client_app
    from fedlottery.runtime.server_app import run_experiment

    if log is None:
        log = _quiet_log if verbosity == QUIET else stderr_log
    out_dir = Path(out_dir)
    configure_output(verbosity)  # idempotent; the command line already called it before Ray started
    delivery.install()  # Flower's delivery loop scans every message for every node: O(messages) instead
    # fedlottery.runtime.ray_runtime: private local Ray or the explicit cluster, checked up front; its client
    # actors are told (their own configuration, not a message) that their state lives in out_dir/client_state
    start_ray(cfg, state_dir=client_state_dir(out_dir))
    if verbosity == QUIET:
        logging.getLogger("ray").setLevel(logging.ERROR)
    elif verbosity == VERBOSE:
        logging.getLogger("ray").setLevel(logging.INFO)
    _describe_ray(cfg, log)
    errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_experiment(grid, cfg, out_dir, log, resume=resume)
        except BaseException as err:  # surfaced below, after the simulation has shut down cleanly
            errors.append(err)
            raise

    with _without_deprecation_banner(tracebacks=verbosity != VERBOSE):
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.partition.num_clients,
            backend_name="ray",
            backend_config=backend_config(cfg),
            verbose_logging=verbosity == VERBOSE,
        )
    if errors:
        raise errors[0]
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}; see the log above")
    return read_json(summary_path)


def __getattr__(name: str):
    """`client_app`: the ClientApp, as `flwr run` loads it (see the module docstring). Resolving it in a process
    where Flower's simulation runtime is loaded installs the one-pass delivery loop first; elsewhere (a real
    SuperNode, a Ray actor without the runtime) nothing is imported for it."""
    if name == "client_app":
        if VCE_API in sys.modules:
            from fedlottery.runtime import delivery

            delivery.install()
        from fedlottery.runtime.client_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `client_app` is listed so that Flower's static check of pyproject's component reference (an AST scan for an
# assignment or an `__all__` entry) finds it.
__all__ = ["NORMAL", "QUIET", "VERBOSE", "backend_config", "client_app", "configure_output", "run_federated"]
