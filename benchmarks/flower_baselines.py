"""Flower's own FedProx and FedAdam (`flwr:<ClassName>`) beside fedlottery's FedAvg and the lottery methods, on
configs/compare_mnist.yaml (real MNIST, LotteryFL's shards, 100 clients, 10 per round, 40 rounds).

    python benchmarks/flower_baselines.py               # writes the config, runs the comparison, prints the table
    python benchmarks/flower_baselines.py --table-only  # re-make the table from the recorded run

The config is configs/compare_mnist.yaml plus the Flower strategies' constructor options, written to
benchmarks/results/flower_baselines/config.yaml, then

    fedlottery compare benchmarks/results/flower_baselines/config.yaml \\
        --strategies fedavg,fedbn,local,lotteryfl,fedltn,flwr:FedProx,flwr:FedAdam \\
        --out benchmarks/results/flower_baselines --overwrite

Options (flwr.serverapp.strategy's own parameters):
- FedProx: proximal_mu = 0.01, the proximal term (mu/2)·||w − w_global||² every client adds to its loss
  (Flower sends it as "proximal-mu"; Li et al. tune mu in {0.001, 0.01, 0.1, 1}).
- FedAdam: eta = 0.01 (server learning rate), eta_l = 0.01 (client learning rate: Flower keeps it but never
  sends it, so it is set to the config's local.lr, which the clients use), tau = 0.001 (adaptivity, Reddi et
  al.'s choice), beta_1 = 0.9 and beta_2 = 0.99 (Flower's defaults).

Writes benchmarks/results/flower_baselines/{config.yaml,rounds.csv,clients.csv,summary.json,table.md,*.png}.
About 10-12 minutes on an idle 2-core CPU (compare_mnist.yaml's seven strategies took 13 min; FedProx's
proximal term adds a little per step).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.config import load_yaml  # noqa: E402

BASE = ROOT / "configs" / "compare_mnist.yaml"
OUT = ROOT / "benchmarks" / "results" / "flower_baselines"
CONFIG = OUT / "config.yaml"
STRATEGIES = ["fedavg", "fedbn", "local", "lotteryfl", "fedltn", "flwr:FedProx", "flwr:FedAdam"]
FLOWER_OPTIONS = {
    "flwr:FedProx": {"proximal_mu": 0.01},
    "flwr:FedAdam": {"eta": 0.01, "eta_l": 0.01, "tau": 0.001, "beta_1": 0.9, "beta_2": 0.99},
}


def write_config() -> Path:
    """compare_mnist.yaml with these strategies and the Flower strategies' options added."""
    cfg = load_yaml(BASE)
    cfg["strategies"] = list(STRATEGIES)
    options = {k: v for k, v in cfg.get("strategy_options", {}).items() if k in STRATEGIES}
    cfg["strategy_options"] = {**options, **FLOWER_OPTIONS}
    cfg["evaluation"]["finetune_epochs"] = 5  # every method also after 5 local epochs of fine-tuning
    OUT.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by benchmarks/flower_baselines.py: {BASE.relative_to(ROOT)} plus the options of Flower's\n"
              "# FedProx and FedAdam (flwr:<ClassName>: constructor arguments of flwr.serverapp.strategy),\n"
              "# FedBN and local training as controls, and every method also fine-tuned 5 local epochs.\n")
    CONFIG.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return CONFIG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table-only", action="store_true", help="print the recorded run's table")
    args = parser.parse_args()
    if not args.table_only:
        config = write_config()
        subprocess.run([sys.executable, "-m", "fedlottery.cli", "compare", str(config.relative_to(ROOT)),
                        "--strategies", ",".join(STRATEGIES), "--out", str(OUT.relative_to(ROOT)), "--overwrite"],
                       check=True, cwd=ROOT)
    print((OUT / "table.md").read_text())


if __name__ == "__main__":
    main()
