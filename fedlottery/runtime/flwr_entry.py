"""`fedlottery run|compare --entry flwr`: the same experiment through Flower's supported entry, `flwr run .`.

Flower deprecates its in-process entry, `flwr.simulation.run_simulation`, which `fedlottery run` uses by
default (docs/flower-ray.md, "Which Flower entry runs it", says why it stays the default: Ray under fedlottery's control, the
ServerApp's error and exit code, Ctrl-C, ~17 s less start-up). This entry runs the experiment as `flwr run .`
against a local simulation SuperLink through simulations/flwr_run.sh, which starts that daemon, streams the run,
turns Flower's exit code 0 for a failed ServerApp into 1 by polling the run's final status, and stops the
daemon again (also on Ctrl-C). The effective experiment (config file plus the command line's overrides and
seed) is written into the output directory and named in the run config, so both entries run exactly the same
experiment. It is also what `fedlottery run` falls back to when the installed Flower has no `run_simulation`.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import yaml

from fedlottery.config import FederatedConfig, to_dict
from fedlottery.errors import ConfigError
from fedlottery.runs.results import read_json

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "simulations" / "flwr_run.sh"
EXPERIMENT_FILE = "experiment.yaml"  # the effective config, as the ServerApp under `flwr run` reads it


def in_process_entry_likely() -> bool:
    """Whether this Flower still has the in-process entry (`flwr.simulation.run_simulation`), told without
    importing Flower (1-2 s at start-up, before Ray can start): the installed package ships
    `flwr/simulation/run_simulation.py`, the module that defines it. The in-process entry imports it later."""
    package = flower_package()
    return package is not None and (package / "simulation" / "run_simulation.py").is_file()


def flower_package() -> Path | None:
    """Where the installed `flwr` package lies, found from its spec (nothing imported)."""
    spec = importlib.util.find_spec("flwr")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def check_flwr_entry() -> None:
    """`flwr run .` builds the Flower app from the project directory: refuse up front without one."""
    if not (SCRIPT.is_file() and (ROOT / "pyproject.toml").is_file()):
        raise ConfigError(f"--entry flwr needs fedlottery's source tree ({SCRIPT} and "
                          f"{ROOT}/pyproject.toml, the Flower app `flwr run .` builds), not found; install "
                          "fedlottery from a clone (`pip install -e .`) or use the default entry")


def _run_config(experiment: Path, out_dir: Path, resume: bool) -> str:
    """`--run-config` for fedlottery.runtime.server_app:main (TOML values; paths absolute: the SuperLink's working
    directory is the project root, not the caller's). Client state in the run directory: the script gives the
    client actors that directory as their own ($FEDLOTTERY_STATE_DIR), which a plain `flwr run .` cannot."""
    return (f'config="{experiment}" out-dir="{out_dir}" num-rounds=0 client-state="directory" '
            f'resume={"true" if resume else "false"}')


def _environment(cfg: FederatedConfig, out_dir: Path) -> dict[str, str]:
    """The script's knobs from the config's `simulation` section: one supernode per client, its resources, and
    the Ray cluster (Flower's backend starts Ray itself, so only $RAY_ADDRESS can choose it); and the client
    actors' own client-state directory (they inherit $FEDLOTTERY_STATE_DIR: the node's configuration)."""
    from fedlottery.runs.client_state import STATE_DIR_ENV
    from fedlottery.runtime.server_app import CLIENT_STATE_DIR

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
           STATE_DIR_ENV: str(Path(out_dir).resolve() / CLIENT_STATE_DIR),
           "NUM_SUPERNODES": str(cfg.partition.num_clients), "CLIENT_CPUS": f"{cfg.simulation.num_cpus:g}",
           "CLIENT_GPUS": f"{cfg.simulation.num_gpus:g}"}
    if cfg.simulation.ray_address:
        env["RAY_ADDRESS"] = cfg.simulation.ray_address
    return env


def run_with_flwr(cfg: FederatedConfig, out_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Run `cfg` through `flwr run .` into out_dir; returns summary.json's content. quiet: Flower's streamed
    log is kept back and shown only if the run fails. Raises RuntimeError when the run did not complete."""
    check_flwr_entry()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = out_dir / EXPERIMENT_FILE
    experiment.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    command = [str(SCRIPT), "--run-config", _run_config(experiment, out_dir, resume)]
    output = subprocess.PIPE if quiet else None
    process = subprocess.Popen(command, cwd=ROOT, env=_environment(cfg, out_dir), stdout=output, stderr=subprocess.STDOUT
                               if quiet else None, text=True)
    try:
        streamed, _ = process.communicate()
    except KeyboardInterrupt:  # the script got the same Ctrl-C: let it stop the run and its SuperLink daemon
        process.wait(timeout=120)
        raise
    if process.returncode != 0:
        if quiet and streamed:
            sys.stderr.write(streamed[-6000:])
        raise RuntimeError(f"`flwr run` did not complete (simulations/flwr_run.sh exit {process.returncode}); "
                           "the log above says why")
    return read_json(out_dir / "summary.json")
