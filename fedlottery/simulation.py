"""In-process federated runs: Flower's simulation runtime with the Ray backend, one supernode per client.

Ray placement comes from the config: `simulation.num_cpus` / `num_gpus` per client actor decide how many
run at once; `simulation.ray_address` (or $RAY_ADDRESS) joins an existing Ray cluster instead of starting one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedlottery.config import FederatedConfig
from fedlottery.results import read_json, stderr_log


def backend_config(cfg: FederatedConfig) -> dict:
    resources = {"num_cpus": cfg.simulation.num_cpus, "num_gpus": cfg.simulation.num_gpus}
    init_args: dict = {"include_dashboard": False, "log_to_driver": True}
    address = cfg.simulation.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        init_args = {"address": address}
    return {"client_resources": resources, "init_args": init_args}


def _join_cluster(cfg: FederatedConfig) -> None:
    """Connect to the configured Ray cluster up front: Flower then reuses the connection, and an unreachable
    address fails at once with a clear error instead of inside the simulation thread (where it hangs)."""
    address = cfg.simulation.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        return
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address)
    except ConnectionError as err:
        raise RuntimeError(
            f"cannot reach the Ray cluster at {address!r} ({err}); start one (`ray start --head`) or fix "
            "simulation.ray_address / $RAY_ADDRESS"
        ) from None


def run_federated(cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None] = stderr_log) -> dict:
    """Run the experiment through Flower's simulation; returns summary.json's content.

    Flower reports a ServerApp exception only in its log, so the summary's absence is what tells failure.
    """
    from fedlottery.client_app import app as client_app
    from fedlottery.server_app import run_experiment

    out_dir = Path(out_dir)
    _join_cluster(cfg)
    errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_experiment(grid, cfg, out_dir, log)
        except BaseException as err:  # surfaced below, after the simulation has shut down cleanly
            errors.append(err)
            raise

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.partition.num_clients,
        backend_name="ray",
        backend_config=backend_config(cfg),
    )
    if errors:
        raise errors[0]
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}; see the log above")
    return read_json(summary_path)
