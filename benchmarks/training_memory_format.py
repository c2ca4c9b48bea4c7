"""Does training a client's model in channels_last pay on this CPU? Paired, interleaved A/B per model.

    python benchmarks/training_memory_format.py [--repeats 7]

One client's local epoch as the federated configs run it (500 images, B = 32, SGD lr 0.01 momentum 0.5, one
thread): the same model, data and batch order in NCHW and in channels_last (model and every batch converted,
conversion of the model outside the timing). Real image shapes (MNIST 1x28x28, CIFAR-10 3x32x32) with random
pixels: the cost of a step does not depend on the values. Process CPU time per epoch, median of the repeats, and
the ratio channels_last / NCHW. Writes benchmarks/results/training_memory_format.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.models import build_model  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "training_memory_format.md"
CASES = [("lotteryfl_cnn", (1, 28, 28)), ("lotteryfl_cnn_bn", (1, 28, 28)), ("lenet5_bn", (3, 32, 32)),
         ("conv4", (3, 32, 32)), ("resnet20", (3, 32, 32))]


def one_epoch(name: str, shape: tuple[int, ...], channels_last: bool, n: int = 500, batch: int = 32) -> float:
    """CPU seconds of one local epoch of `name` on n random images of `shape`."""
    torch.manual_seed(0)
    x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    model = build_model(name, shape, 10, "default")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    model.train()
    start = time.process_time()
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad()
        F.cross_entropy(model(xb), y[i:i + batch]).backward()
        optimizer.step()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = ["| model | input | NCHW CPU-s / epoch | channels_last CPU-s / epoch | ratio |", "|---|---|---|---|---|"]
    for name, shape in CASES:
        nchw, last = [], []
        for _ in range(args.repeats):  # interleaved: machine noise hits both alike
            nchw.append(one_epoch(name, shape, False))
            last.append(one_epoch(name, shape, True))
        a, b = statistics.median(nchw), statistics.median(last)
        lines.append(f"| {name} | {'x'.join(map(str, shape))} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
        print(lines[-1], flush=True)
    OUT.write_text("# Training in channels_last vs NCHW, one client epoch\n\n"
                   f"`python benchmarks/training_memory_format.py --repeats {args.repeats}` (torch "
                   f"{torch.__version__}, one thread)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
