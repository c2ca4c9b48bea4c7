"""In-process federated runs: Flower's simulation runtime with the Ray backend, one supernode per client.

Ray placement comes from the config: `simulation.num_cpus` / `num_gpus` per client actor decide how many
run at once; `simulation.ray_address` (or $RAY_ADDRESS) joins an existing Ray cluster instead of starting one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedlottery import flower_delivery
from fedlottery.config import FederatedConfig
from fedlottery.ray_runtime import ray_init_args, start_ray
from fedlottery.results import read_json, stderr_log


def backend_config(cfg: FederatedConfig) -> dict:
    resources = {"num_cpus": cfg.simulation.num_cpus, "num_gpus": cfg.simulation.num_gpus}
    return {"client_resources": resources, "init_args": ray_init_args(cfg)}  # private local Ray unless configured


def run_federated(cfg: FederatedConfig, out_dir: Path, log: Callable[[str], None] = stderr_log,
                  resume: bool = False) -> dict:
    """Run the experiment through Flower's simulation; returns summary.json's content.

    resume: go on from the checkpoint in out_dir (see fedlottery.checkpoint). Client state lives in
    out_dir/client_state, so it survives a kill and stays out of the driver's memory.
    Flower reports a ServerApp exception only in its log, so the summary's absence is what tells failure.
    """
    from fedlottery.client_app import app as client_app
    from fedlottery.server_app import run_experiment

    out_dir = Path(out_dir)
    flower_delivery.install()  # Flower's delivery loop scans every message for every node: O(messages) instead
    start_ray(cfg)  # fedlottery.ray_runtime: private local Ray or the explicit cluster, checked up front
    errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_experiment(grid, cfg, out_dir, log, resume=resume)
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
