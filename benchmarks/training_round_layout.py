"""What `local.memory_format: channels_last` saves a real federated training round, end to end.

    python benchmarks/training_round_layout.py [--repeats 3] [--rounds 12] [--config configs/table2_mnist.yaml]

Runs the config's LotteryFL (`--strategy`) for `--rounds` rounds through `fedlottery run`, once per memory format,
alternating, so a shared machine's load falls on both alike. CPU-seconds are summed over the whole process tree
(driver, Ray's processes, the client actors: the poller of benchmarks/startup.py) between the moment rounds.csv
gains its row for round 1 (actors started, imports done) and the moment it gains the row for round `rounds - 1`:
the training rounds 2 .. rounds-1, without start-up and without the final round's evaluation.

Beside each run, in this process, the floor: a bare PyTorch loop doing the same clients' local training (the
config's clients per round, each a copy of θ0 trained for E epochs on its real training split with the config's
batch size and SGD, one thread as a client actor has), in the same memory format; its process CPU-s per round.
The ratio fedlottery / floor is the framework's cost over the training itself: Ray, Flower's messages, the
strategy's own work (LotteryFL's validation gate and pruning check), aggregation. Writes
benchmarks/results/training_round_layout.md (and .csv).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import POLL_S, TreeMeter, write_results  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "training_round_layout"
FORMATS = ("contiguous", "channels_last")


def rows_in(rounds_csv: Path) -> int:
    try:
        with rounds_csv.open() as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return 0


ROLES = ("driver", "client actors", "Ray's own processes")


def role(pid: int, root: int) -> str:
    """Which part of a run a process is: the driver (`fedlottery run`), a client actor, or one of Ray's own."""
    if pid == root:
        return ROLES[0]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ROLES[2]
    return ROLES[1] if "ClientAppActor" in cmdline or "default_worker.py" in cmdline else ROLES[2]


def cpu_by_role(meter: TreeMeter, roles: dict[int, str]) -> dict[str, float]:
    """The meter's CPU-s so far, summed per role (each pid's role looked up once, while it lives)."""
    totals = dict.fromkeys(ROLES, 0.0)
    for pid, cpu in meter.cpu.items():
        if pid not in roles:
            roles[pid] = role(pid, meter.root)
        totals[roles[pid]] += cpu
    return totals


def one_run(config: Path, strategy: str, rounds: int, memory_format: str, env: dict[str, str]) -> dict:
    """CPU-s of the process tree over rounds 2 .. rounds-1 (in all and per role), and their wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out), "-q",
               "--rounds", str(rounds), "--set", f"strategies=[{strategy}]",
               "--set", f"local.memory_format={memory_format}", "--set", f"evaluation.every={rounds}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        meter, marks, roles = TreeMeter(proc.pid), {}, {}
        while proc.poll() is None:
            meter.poll()
            by_role = cpu_by_role(meter, roles)  # every poll, so that each process is classified while it lives
            seen = rows_in(out / "rounds.csv")
            for mark in (1, rounds - 1):
                if mark not in marks and seen >= mark:
                    marks[mark] = (meter.cpu_seconds(), time.perf_counter(), by_role)
            time.sleep(POLL_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{memory_format} run failed: {proc.stderr.read()[-2000:]}")
    (cpu1, t1, roles1), (cpu2, t2, roles2) = marks[1], marks[rounds - 1]
    measured = rounds - 2
    return {"format": memory_format, "cpu_s_per_round": (cpu2 - cpu1) / measured,
            "wall_s_per_round": (t2 - t1) / measured, "rounds_measured": measured,
            **{f"{r} cpu_s_per_round": (roles2[r] - roles1[r]) / measured for r in ROLES}}


def plain_loop_cpu(config: Path, rounds: int, memory_format: str) -> float:
    """Process CPU-s per round of the bare loop over `rounds - 2` rounds (see the module docstring)."""
    import copy
    import random

    import torch
    import torch.nn.functional as F

    from fedlottery.data import load_dataset, make_partitions
    from fedlottery.models import build_model
    from fedlottery.runtime.experiment import load_experiment

    cfg = load_experiment(config, strategies=["fedavg"])
    torch.set_num_threads(1)
    data = load_dataset(cfg.data)
    splits = make_partitions(data, cfg.partition, cfg.seed)
    torch.manual_seed(cfg.seed)
    theta0 = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.init)
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    picker, generator = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    measured = rounds - 2
    start = time.process_time()
    for _ in range(measured):
        for pid in picker.sample(range(len(splits)), cfg.clients_per_round):
            model = copy.deepcopy(theta0).to(memory_format=layout).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.local.lr, momentum=cfg.local.momentum)
            x, y = data.inputs("train", splits[pid].train), data.y_train[splits[pid].train]
            for _ in range(cfg.local.epochs):
                order = torch.randperm(len(y), generator=generator)
                for first in range(0, len(y), cfg.local.batch_size):
                    idx = order[first:first + cfg.local.batch_size]
                    loss = F.cross_entropy(model(x[idx].contiguous(memory_format=layout)), y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    return (time.process_time() - start) / measured


def summarise(rows: list[dict], args: argparse.Namespace) -> str:
    keys = ("cpu_s_per_round", "wall_s_per_round", "floor_cpu_s_per_round")
    med = {f: {k: statistics.median(r[k] for r in rows if r["format"] == f) for k in keys} for f in FORMATS}
    ratios = [b["cpu_s_per_round"] / a["cpu_s_per_round"]
              for a, b in zip([r for r in rows if r["format"] == FORMATS[0]],
                              [r for r in rows if r["format"] == FORMATS[1]])]
    lines = [f"`python benchmarks/training_round_layout.py --repeats {args.repeats} --rounds {args.rounds} "
             f"--config {args.config} --strategy {args.strategy}`", "",
             "| local.memory_format | CPU-s per training round (process tree) | wall s per round | bare loop CPU-s "
             "per round | fedlottery / bare loop |", "|---|---|---|---|---|"]
    over_floor = {f: statistics.median(r["cpu_s_per_round"] / r["floor_cpu_s_per_round"]
                                       for r in rows if r["format"] == f) for f in FORMATS}
    lines += [f"| {f} | {med[f]['cpu_s_per_round']:.2f} | {med[f]['wall_s_per_round']:.2f} | "
              f"{med[f]['floor_cpu_s_per_round']:.2f} | {over_floor[f]:.2f}x |" for f in FORMATS]
    lines += ["", f"channels_last / contiguous, CPU-s, paired per repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})", "",
              "Where a training round's CPU-s go (medians, per round):", "",
              "| local.memory_format | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
    for f in FORMATS:
        mine = [r for r in rows if r["format"] == f]
        shares = [statistics.median(r[f"{part} cpu_s_per_round"] for r in mine) for part in ROLES]
        lines.append(f"| {f} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--config", default="configs/table2_mnist.yaml")
    parser.add_argument("--strategy", default="lotteryfl")
    parser.add_argument("--out", default=str(OUT), help="OUT.csv and OUT.md are written")
    args = parser.parse_args()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    env.setdefault("FEDLOTTERY_DATA", str(ROOT.parent / "shared" / "data"))
    rows = []
    for repeat in range(args.repeats):
        for memory_format in FORMATS if repeat % 2 == 0 else FORMATS[::-1]:
            row = {"repeat": repeat, **one_run(Path(args.config), args.strategy, args.rounds, memory_format, env),
                   "floor_cpu_s_per_round": plain_loop_cpu(Path(args.config), args.rounds, memory_format)}
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    write_results(Path(args.out), rows, summarise(rows, args))


if __name__ == "__main__":
    main()
