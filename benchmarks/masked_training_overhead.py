"""Overhead of fedlottery's masked training loop against a plain dense PyTorch loop (target ratio <= 1.10).

    python benchmarks/masked_training_overhead.py [--iterations 1000] [--repeats 5]

Same model, data, optimizer (Adam, fused), batch size and batch order on both sides; fedlottery's loop trains
under an 80%-sparse mask (gradient masking + re-applied mask every step). Runs alternate A/B so machine noise
hits both alike; the ratio of medians is reported. Writes benchmarks/results/masked_training_overhead.csv.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.config import TrainingConfig  # noqa: E402
from fedlottery.data import DataNotFoundError, load_dataset  # noqa: E402
from fedlottery.models import build_model, prunable_names  # noqa: E402
from fedlottery.sparsity import Mask, magnitude_prune  # noqa: E402
from fedlottery.training import train  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "masked_training_overhead.csv"


def plain_loop(model, x, y, iterations: int, batch_size: int, lr: float, seed: int) -> float:
    """What a user would write by hand: dense weights, no mask."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    while step < iterations:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= iterations:
                break
    return time.perf_counter() - start


def masked_loop(model, mask, x, y, iterations: int, batch_size: int, lr: float, seed: int) -> float:
    cfg = TrainingConfig(optimizer="adam", lr=lr, batch_size=batch_size, iterations=iterations)
    return train(model, (x, y), cfg, torch.Generator().manual_seed(seed), mask=mask).wall_s


def measure(model_name: str, dataset, iterations: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x, y = dataset.inputs("train"), dataset.y_train
    template = build_model(model_name, dataset.input_shape, dataset.num_classes)
    params = dict(template.named_parameters())
    mask = magnitude_prune(Mask.ones_like({n: params[n] for n in prunable_names(template)}), params, 0.8)
    plain, masked = [], []
    for r in range(repeats):
        for kind in (("plain", "masked") if r % 2 == 0 else ("masked", "plain")):
            model = build_model(model_name, dataset.input_shape, dataset.num_classes)
            model.load_state_dict(template.state_dict())
            if kind == "plain":
                plain.append(plain_loop(model, x, y, iterations, 60, 1.2e-3, r))
            else:
                masked.append(masked_loop(model, mask, x, y, iterations, 60, 1.2e-3, r))
    p, m = statistics.median(plain), statistics.median(masked)
    return {
        "model": model_name, "dataset": dataset.name, "iterations": iterations, "repeats": repeats,
        "threads": torch.get_num_threads(), "plain_ms_per_step": round(1000 * p / iterations, 4),
        "masked_ms_per_step": round(1000 * m / iterations, 4), "ratio": round(m / p, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        mnist = load_dataset("mnist")
        cases = [("lenet_300_100", mnist), ("lotteryfl_cnn", mnist)]
    except DataNotFoundError:
        digits = load_dataset("digits")
        cases = [("mlp_digits", digits), ("cnn_digits", digits)]
    rows = [measure(name, ds, args.iterations, args.repeats) for name, ds in cases]
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row)
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
