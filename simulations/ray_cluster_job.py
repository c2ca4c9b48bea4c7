"""Run a federated experiment on an existing Ray cluster (a Ray job's entry point).

    ray job submit --working-dir . -- python simulations/ray_cluster_job.py configs/default.yaml --out runs/cluster
    python simulations/ray_cluster_job.py CONFIG --address ray://head:10001     # from outside the cluster

Flower only starts Ray when none is initialised, so the simulation's client actors are placed on the cluster
with the config's per-client resources (`simulation.num_cpus` / `num_gpus`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedlottery.errors import UserError  # noqa: E402
from fedlottery.runtime.experiment import load_experiment  # noqa: E402
from fedlottery.runs.report import comparison_table  # noqa: E402
from fedlottery.runtime.simulation import run_federated  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", default="runs/cluster")
    parser.add_argument("--address", help="the cluster's explicit Ray address, e.g. 10.0.0.5:6379 or ray://head:10001 "
                        "(default: simulation.ray_address, else $RAY_ADDRESS, which `ray job submit` sets)")
    args = parser.parse_args()
    try:
        cfg = load_experiment(args.config)
        cfg.simulation.ray_address = args.address or cfg.simulation.ray_address or os.environ.get("RAY_ADDRESS")
        if not cfg.simulation.ray_address:
            parser.error("no Ray cluster given: pass --address HOST:PORT or set RAY_ADDRESS")
        cfg.simulation.validate("simulation")  # refuses 'auto' and malformed addresses
        summary = run_federated(cfg, Path(args.out))
    except UserError as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(comparison_table([(Path(args.out).name, summary)]))


if __name__ == "__main__":
    main()
