"""Run a federated experiment on an existing Ray cluster (a Ray job's entry point).

    ray job submit --working-dir . -- python simulations/ray_cluster_job.py configs/default.yaml --out runs/cluster
    python simulations/ray_cluster_job.py CONFIG --address ray://head:10001     # from outside the cluster

Flower only starts Ray when none is initialised, so the simulation's client actors are placed on the cluster
with the config's per-client resources (`simulation.num_cpus` / `num_gpus`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedlottery.config import load_federated_config  # noqa: E402
from fedlottery.report import comparison_table  # noqa: E402
from fedlottery.simulation import run_federated  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", default="runs/cluster")
    parser.add_argument("--address", default="auto", help="Ray address (default: the cluster this job runs in)")
    args = parser.parse_args()
    cfg = load_federated_config(args.config)
    cfg.simulation.ray_address = args.address
    summary = run_federated(cfg, Path(args.out))
    print(comparison_table([(Path(args.out).name, summary)]))


if __name__ == "__main__":
    main()
