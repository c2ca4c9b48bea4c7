"""Does a 10%-dense random LeNet-5 train at all at Table 2's learning rate? A centralized check behind FLASH's
failure on CIFAR-10 Table 2 (docs/results.md, LotteryFL's Table 2, CIFAR-10), where θ_g stayed near chance.

    nice -n 10 .venv/bin/python benchmarks/sparse_trainability.py [--epochs 4] [--seeds 0,1] [--lrs 0.01,0.05]

No federation: LeNet-5 with BatchNorm (`lenet5_bn`, the Table-2 model) trained on one seeded 10,000-image subset of
real CIFAR-10's training set, SGD momentum 0.5, B = 32 (Table 2's local optimiser), tested on all 10,000 test
images after each epoch. Variants, each from the same seeded θ0:

  dense             every weight trained;
  random 10%        a fixed random mask keeping 10% of every prunable layer (FLASH's starting mask before its hunt),
                    θ0's surviving weights as they are;
  random 10%, rescaled  the same mask, surviving weights multiplied by 1/sqrt(layer density), so each unit's
                    input variance at θ0 matches the dense network's (a sparse-aware initialisation).

Writes benchmarks/results/sparse_trainability.md (one row per variant and learning rate, mean ± std over seeds).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.config import TrainingConfig  # noqa: E402
from fedlottery.data import load_dataset  # noqa: E402
from fedlottery.models import build_model, prunable_names  # noqa: E402
from fedlottery.sparsity import random_mask_with_counts, rescale_counts  # noqa: E402
from fedlottery.training import evaluate, train  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "sparse_trainability.md"
VARIANTS = ("dense", "random 10%", "random 10%, rescaled")
DENSITY = 0.1


def start_model(variant: str, dataset, seed: int):
    """θ0 from the seed, and the variant's mask (None for dense) applied to it."""
    torch.manual_seed(seed)
    model = build_model("lenet5_bn", dataset.input_shape, dataset.num_classes, "default")
    if variant == "dense":
        return model, None
    params = dict(model.named_parameters())
    names = prunable_names(model)
    counts = rescale_counts({n: DENSITY for n in names}, {n: params[n].numel() for n in names}, DENSITY)
    mask = random_mask_with_counts({n: params[n].shape for n in names}, counts,
                                   torch.Generator().manual_seed(seed + 1))
    mask.apply_(params)
    if variant.endswith("rescaled"):
        with torch.no_grad():
            for name, density in mask.layer_densities().items():
                params[name].mul_(density ** -0.5)
    return model, mask


def accuracy_curve(variant: str, lr: float, seed: int, dataset, epochs: int, subset: int) -> list[float]:
    order = torch.randperm(len(dataset.y_train), generator=torch.Generator().manual_seed(seed))[:subset]
    data = (dataset.inputs("train", order), dataset.y_train[order])
    model, mask = start_model(variant, dataset, seed)
    cfg = TrainingConfig(optimizer="sgd", lr=lr, momentum=0.5, batch_size=32)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        train(model, data, cfg, generator, mask=mask, epochs=1)
        curve.append(evaluate(model, (dataset.inputs("test"), dataset.y_test))[1])
    return curve


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lrs", default="0.01,0.05")
    parser.add_argument("--subset", type=int, default=10_000)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    torch.set_num_threads(1)
    dataset = load_dataset("cifar10")
    started = time.perf_counter()
    header = " | ".join(f"epoch {e + 1}" for e in range(args.epochs))
    rows = [f"| variant | lr | {header} |", "|---|---:|" + "---:|" * args.epochs]
    for lr in lrs:
        for variant in VARIANTS:
            curves = [accuracy_curve(variant, lr, s, dataset, args.epochs, args.subset) for s in seeds]
            cells = " | ".join(cell([c[e] for c in curves]) for e in range(args.epochs))
            rows.append(f"| {variant} | {lr:g} | {cells} |")
            print(rows[-1], flush=True)
    wall = time.perf_counter() - started
    command = " ".join(["nice -n 10 .venv/bin/python benchmarks/sparse_trainability.py"] + sys.argv[1:])
    OUT.write_text(
        "# A 10%-dense random LeNet-5 on CIFAR-10, trained centrally\n\n"
        f"Command: `{command}` ({wall:.0f} s wall, 2 shared CPUs). Test accuracy % on all 10,000 CIFAR-10 test "
        f"images after each epoch over a {args.subset:,}-image training subset, mean ± std over seeds {args.seeds}. "
        "SGD momentum 0.5, B = 32, `lenet5_bn` with its default initialisation; see the script's docstring.\n\n"
        + "\n".join(rows) + "\n")
    print(f"written: {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
