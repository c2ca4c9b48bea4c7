"""Wire-codec sizes against the information-theoretic bound, and codec speed against one local training step.

    FLWR_TELEMETRY_ENABLED=0 .venv/bin/python benchmarks/codecs.py [--sizes 60000 1000000 11000000]
        [--densities 1 0.5 0.2 0.1 0.05 0.01] [--repeats 5] [--steps 10]

For every n and density d an iid Bernoulli(d) keep-mask is drawn (numpy, seeded) over n standard-normal float32
values. Each applicable codec (dense, bitmap, indices, rice, known when the receiver holds the mask, and auto)
encodes the tensor; `bytes` is len(Array.data), i.e. exactly what Flower's count_bytes() counts for the values.
`bound_bytes` is `fedlottery.comm.codec.bound_bytes(n, k/n, mask_known)` with k the realised kept count: 4k
bytes of values plus, when the receiver lacks the mask, n*H(k/n)/8 bytes (the entropy of the mask actually
sent; with the nominal d the ratio would wander by the binomial noise of k). ratio = bytes / bound_bytes.
mask_known=True means reference = keep (the receiver holds this exact mask); the explicit codecs dense / bitmap /
indices / rice ignore the reference, so they are measured once and reported under both mask_known values (their
bytes are identical; only the bound differs). "dense" sends all n values at every density (pruned ones as 0).

encode_mb_s / decode_mb_s = (4n bytes of the dense float32 tensor, in 10**6 bytes) / seconds, where seconds is
the median of --repeats timed calls (after one untimed warm-up call) of encode_tensor / decode_tensor.

The same run times one SGD step (batch 32, cross-entropy) of an nn.Sequential MLP 3072-2048-1536-1024-10
(11,020,288 weights, about one 11M tensor) with 1 torch thread and with the default thread count (median of
--steps steps after 2 warm-up steps), and writes benchmarks/results/codecs.csv and benchmarks/results/codecs.md.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlottery.comm.codec import bound_bytes, codec_of, decode_tensor, encode_tensor  # noqa: E402

OUT_CSV = ROOT / "benchmarks" / "results" / "codecs.csv"
OUT_MD = ROOT / "benchmarks" / "results" / "codecs.md"
COLUMNS = ["n", "density", "codec", "mask_known", "bytes", "bound_bytes", "ratio", "encode_mb_s", "decode_mb_s"]
EXPLICIT = ("dense", "bitmap", "indices", "rice")


def timed(fn, repeats: int):
    """(result of the warm-up call, median seconds of `repeats` timed calls)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def measure(tensor, keep, reference, codec: str, repeats: int):
    """Encode/decode one configuration; checks the round trip once. -> (array, encode s, decode s)."""
    array, enc_s = timed(lambda: encode_tensor(tensor, keep, reference=reference, codec=codec), repeats)
    (out, got), dec_s = timed(lambda: decode_tensor(array, reference), repeats)
    name = codec_of(array)[0]
    if name != "dense":
        assert torch.equal(got, keep), (codec, name)
    assert torch.equal(out.view(torch.int32), torch.where(keep, tensor, 0.0).view(torch.int32)), codec
    return array, enc_s, dec_s


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3072, 2048), nn.ReLU(), nn.Linear(2048, 1536), nn.ReLU(),
                         nn.Linear(1536, 1024), nn.ReLU(), nn.Linear(1024, 10))


def training_step_seconds(threads: int, steps: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(32, 3072), torch.randint(0, 10, (32,))
        loss_fn = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        for _ in range(2):
            step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000, 11_000_000])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1, 0.05, 0.01])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "FLWR_TELEMETRY_ENABLED=0 .venv/bin/python benchmarks/codecs.py " + " ".join(sys.argv[1:])

    rows, auto = [], {}
    wall = time.perf_counter()
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        tensor = torch.from_numpy(rng.standard_normal(n, dtype=np.float32))
        for density in args.densities:
            keep = torch.from_numpy(rng.random(n) < density)
            kept = int(keep.sum())
            realised = kept / n

            def row(codec, known, array, enc_s, dec_s, n=n, density=density, realised=realised):
                bound = bound_bytes(n, realised, known)
                size = len(array.data)
                rows.append({
                    "n": n, "density": density, "codec": codec, "mask_known": known, "bytes": size,
                    "bound_bytes": f"{bound:.1f}", "ratio": f"{size / bound:.6f}" if bound > 0 else "",
                    "encode_mb_s": f"{4 * n / 1e6 / enc_s:.1f}", "decode_mb_s": f"{4 * n / 1e6 / dec_s:.1f}",
                })
                return size / bound if bound > 0 else float("inf")

            shared = {codec: measure(tensor, keep, None, codec, args.repeats) for codec in EXPLICIT}
            for known in (False, True):
                reference = keep if known else None
                for codec in EXPLICIT:
                    row(codec, known, *shared[codec])
                if known:
                    row("known", known, *measure(tensor, keep, reference, "known", args.repeats))
                array, enc_s, dec_s = measure(tensor, keep, reference, "auto", args.repeats)
                ratio = row("auto", known, array, enc_s, dec_s)
                auto[(n, density, known)] = (codec_of(array)[0], ratio, enc_s, dec_s)
                print(f"n={n:>10,} d={density:<5} known={known!s:<5} auto={codec_of(array)[0]:<7} "
                      f"ratio={ratio:.5f} enc={enc_s * 1e3:7.1f} ms dec={dec_s * 1e3:7.1f} ms", flush=True)
    codec_wall = time.perf_counter() - wall

    OUT_CSV.parent.mkdir(parents=True, exist_ok=True)
    with OUT_CSV.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    weights = sum(m.weight.numel() for m in mlp() if isinstance(m, nn.Linear))
    default_threads = torch.get_num_threads()
    step_1 = training_step_seconds(1, args.steps)
    step_d = training_step_seconds(default_threads, args.steps)
    print(f"training step: {step_1 * 1e3:.1f} ms (1 thread), {step_d * 1e3:.1f} ms ({default_threads} threads)")

    lines = [
        "# Wire codecs: bytes vs the information-theoretic bound, and speed vs a training step",
        "",
        f"Command: `{command.strip()}` (wall time of the codec part: {codec_wall:.0f} s).",
        (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
         f"numpy {np.__version__}."),
        "",
        ("Bound = 4k bytes of float32 values + (mask known ? 0 : n*H(k/n)/8 bytes), k = realised kept count of "
         "the iid mask. Every row and the per-codec speeds are in `codecs.csv`."),
        "",
        "## Auto codec: bytes / bound (chosen codec)",
        "",
        "| n | density | mask unknown | mask known |",
        "|---:|---:|---:|---:|",
    ]
    for n in args.sizes:
        for density in args.densities:
            cells = []
            for known in (False, True):
                name, ratio, _, _ = auto[(n, density, known)]
                cells.append(f"{ratio:.5f} ({name})")
            lines.append(f"| {n:,} | {density:g} | {cells[0]} | {cells[1]} |")
    worst = max(r for (n, _, _), (_, r, _, _) in auto.items() if n >= 1_000_000) if any(
        n >= 1_000_000 for n in args.sizes) else float("nan")
    lines += ["", f"Worst auto ratio at n >= 1M: {worst:.5f} (target <= 1.03).", ""]
    big = max(args.sizes)
    lines += [
        f"## Encode + decode of one {big:,}-entry tensor (auto) vs one local training step",
        "",
        (f"Training step: SGD (momentum 0.9), batch 32, cross-entropy, `nn.Sequential` MLP "
         f"3072-2048-1536-1024-10 with {weights:,} weights; median of {args.steps} steps: **{step_1 * 1e3:.1f} ms "
         f"with 1 torch thread**, **{step_d * 1e3:.1f} ms with {default_threads} threads** (default). Codec "
         f"times: median of {args.repeats} calls, single-threaded numpy."),
        "",
        ("| density | mask known | codec | encode s | decode s | encode+decode s | / step (1 thread) | "
         f"/ step ({default_threads} threads) |"),
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for density in args.densities:
        for known in (False, True):
            name, _, enc_s, dec_s = auto[(big, density, known)]
            total = enc_s + dec_s
            lines.append(f"| {density:g} | {known} | {name} | {enc_s:.4f} | {dec_s:.4f} | {total:.4f} | "
                         f"{total / step_1:.2f} | {total / step_d:.2f} |")
    lines.append("")
    OUT_MD.write_text("\n".join(lines))
    print(f"wrote {OUT_CSV.relative_to(ROOT)} and {OUT_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
