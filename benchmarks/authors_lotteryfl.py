"""LotteryFL's Table-2 MNIST training rounds through the authors' own code and through fedlottery, side by side:
CPU-seconds per round of each whole process tree, and their ratio.

Usage (from the repository root, `.venv` active):

    python benchmarks/authors_lotteryfl.py --authors-repo AUTHORS_CHECKOUT --authors-python AUTHORS_ENV/bin/python
                                           [--repeats 2] [--rounds 8] [--config configs/table2_mnist.yaml]
                                           [--variant partition.val_fraction=0.1]

Why: the target "a Table-2 training round <= 0.5x the authors' CPU-s" needs the authors' code
(github.com/charleslipku/LotteryFL, src/lotteryFL.py) run on the same machine, in the same minutes, as
fedlottery. None of their code is in this repository: --authors-repo is a checkout of theirs (e.g. `git archive` of
a clone, extracted outside this tree) and --authors-python an environment that runs it (torch, torchvision,
tensorboardX, tqdm and pandas; no GPU: their `--gpu` is left out, since any value of it, 0 included, picks CUDA).

Each repeat runs their script, then `fedlottery run` (then once per --variant, the config with that one setting
changed), so a shared machine's load falls on all alike; all with one thread per process (OMP_NUM_THREADS =
MKL_NUM_THREADS = 1; fedlottery's client actors have one each anyway). Their arguments come from the config:
the same clients, shards, clients per round, E, B, lr and LotteryFL options. Their script runs from a temporary
copy of their src/, beside a data/mnist/MNIST/raw/ of links to the real MNIST files (FEDLOTTERY_DATA/MNIST/raw),
so it downloads nothing and writes nothing in their checkout.

Their rounds: this process reads their stdout line by line and notes the CPU-s of their process tree at each line
(the poller of benchmarks/startup.py). A round runs from its " | Global Training Round : N |" line to the next
round's; its training phase from that line to the round's last "... is trained ..." line (each client's gate
inference, pruning, local training and post-training inference); the rest is their aggregation and their
evaluation of every client, which their code does each round. fedlottery's rounds: CPU-s of its tree between
rounds.csv gaining row N-1 and row N, as in benchmarks/training_round_layout.py; no client is evaluated in
rounds 2 .. R-1 (the `evaluated` column says so from rounds.csv), so its training phase is its whole round. Only
rounds 2 .. R-1 count: round 1 holds start-up, round R fedlottery's final evaluation (here without its deployed
and fine-tuned columns, which only that round computes, to save two minutes a run). Writes
benchmarks/results/authors_lotteryfl.md (and .csv: one row per run and round).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import POLL_S, TreeMeter, write_results  # noqa: E402
from training_round_layout import rows_in  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "authors_lotteryfl"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")
THEIR_IMPORTS = "torch, torchvision, tensorboardX, tqdm, pandas"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROUND_LINE = re.compile(r"\| Global Training Round : (\d+) \|")
TRAINED_LINE = " is trained, "
# Only the final round computes these (evaluation.finetune_rounds: last); rounds 2 .. R-1 are the same without them.
LAST_ROUND_ONLY = ("evaluation.deployed=false", "evaluation.finetune_epochs=0")
TARGET = 0.5
# What differs between the two rounds, read from the two codes (the .md carries it under the table).
NOTES = """What differs between the two rounds (from reading both codes; not measured here):

- Their training phase holds, per client, an inference on up to 80 of its test images before training (the
  pruning gate) and another after it (the accuracy they print); fedlottery's gate evaluates the client's
  validation split (8 images as configs/table2_mnist.yaml ships) and nothing after training.
- Their whole round adds their evaluation of every client (at most 500) on up to 80 test images, every round;
  fedlottery evaluates no client in the measured rounds (the `evaluated` column, from its rounds.csv).
- Their split trains on the first 90% of a client's 40 images (36: two batches of B = 32 an epoch, 20 optimizer
  steps a client); the config's val_fraction 0.2 leaves 32 (one batch, 10 steps). `--variant
  partition.val_fraction=0.1` gives fedlottery their 36 (and a 4-image gate).
- Model: their CNNMnist (dropout, no BatchNorm); the config's lotteryfl_cnn_bn (BatchNorm after each conv).
- Their code masks the gradients every step through NumPy (a CPU copy of every weight and gradient) and passes
  every image through torchvision's PIL transform at every batch; fedlottery masks in torch and holds the data
  set as tensors.
- Theirs is one process; fedlottery's tree is its driver, Ray's own processes and two client actors, and it
  writes a checkpoint every round (checkpoint.every: 1, the default), all counted.
"""


def import_error(python: str) -> str | None:
    """Why `python` cannot import what their code needs, or None."""
    try:
        probe = subprocess.run([python, "-c", f"import {THEIR_IMPORTS}"], capture_output=True, text=True)
    except OSError as error:
        return str(error)
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["it did not start"])[-1]


def check_authors(repo: Path, python: str, raw: Path) -> None:
    """Fail before any run, naming what is missing and how to get it."""
    if not (repo / "src" / "lotteryFL.py").is_file():
        sys.exit(f"--authors-repo {repo}: no src/lotteryFL.py there. Extract the authors' code outside this tree, "
                 "e.g. `git clone https://github.com/charleslipku/LotteryFL DIR` (or `git --git-dir=MIRROR archive "
                 "HEAD | tar -x -C DIR`), and pass DIR.")
    why = import_error(python)
    if why:
        sys.exit(f"--authors-python {python} cannot import what their code needs ({THEIR_IMPORTS}): {why}. "
                 "Make it a venv of its own: `python3 -m venv DIR && DIR/bin/pip install torch==2.14.1 "
                 "torchvision==0.29.1 tensorboardX tqdm pandas`.")
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        sys.exit(f"{raw}: no {', '.join(missing)}. Set FEDLOTTERY_DATA to the folder holding MNIST/raw/.")


def their_workspace(tmp: Path, repo: Path, raw: Path) -> Path:
    """A copy of their src/ beside data/mnist/MNIST/raw/ linking the real files (torchvision's layout: it finds
    the archives and unpacks them there, downloading nothing); returns the src/ to run from."""
    shutil.copytree(repo / "src", tmp / "src")
    their_raw = tmp / "data" / "mnist" / "MNIST" / "raw"
    their_raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (their_raw / name).symlink_to(raw / name)
    return tmp / "src"


def their_arguments(cfg, rounds: int) -> list[str]:
    """The README's MNIST command with the config's values (their --local_ep 60 becomes the config's E)."""
    from strategies.lotteryfl import LotteryFLOptions

    opts = LotteryFLOptions(**cfg.strategy_options.get("lotteryfl", {}))
    part = cfg.partition
    return ["--model=cnn", "--dataset=mnist_extr_noniid", "--iid=0", f"--epochs={rounds}",
            f"--prune_percent={100 * opts.prune_rate:g}", f"--local_ep={cfg.local.epochs}",
            f"--prune_start_acc={opts.acc_threshold:g}", f"--prune_end_rate={opts.target_density:g}",
            f"--lr={cfg.local.lr:g}", f"--local_bs={cfg.local.batch_size}", f"--num_users={part.num_clients}",
            f"--frac={cfg.clients_per_round / part.num_clients:g}", f"--nclass={part.shards_per_client}",
            f"--nsamples={part.shard_size}", f"--rate_unbalance={part.unbalanced_rate:g}"]


def read_their_rounds(proc: subprocess.Popen) -> dict[int, dict]:
    """round -> (CPU-s, time) at its first line and at its last trained client, and its clients trained."""
    meter, marks, current = TreeMeter(proc.pid), {}, None
    for line in proc.stdout:
        meter.poll()
        now = (meter.cpu_seconds(), time.perf_counter())
        if found := ROUND_LINE.search(line):
            current = int(found[1])
            marks[current] = {"start": now, "trained": None, "clients": 0}
        elif current is not None and TRAINED_LINE in line:
            marks[current]["trained"] = now
            marks[current]["clients"] += 1
    proc.wait()
    return marks


def authors_run(python: str, src: Path, args: list[str], cfg, rounds: int) -> list[dict]:
    """Their script for `rounds` rounds: one row per measured round (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ONE_THREAD, CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, "-u", "lotteryFL.py", *args], cwd=src, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True, bufsize=1)
        marks = read_their_rounds(proc)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"their lotteryFL.py failed (exit {proc.returncode}): {err.read()[-2000:]}")
    rows = []
    for rnd in range(2, rounds):
        mark, following = marks[rnd], marks[rnd + 1]
        if mark["clients"] != cfg.clients_per_round:
            raise RuntimeError(f"their round {rnd} trained {mark['clients']} clients, not the config's "
                               f"{cfg.clients_per_round}: their --frac rounds the count down; adjust it.")
        (cpu0, t0), (cpu1, t1), (cpu2, t2) = mark["start"], mark["trained"], following["start"]
        rows.append({"code": "authors", "round": rnd, "clients": mark["clients"],
                     "evaluated": min(cfg.partition.num_clients, 500),  # their code: every user, at most 500
                     "train_cpu_s": cpu1 - cpu0, "round_cpu_s": cpu2 - cpu0,
                     "train_wall_s": t1 - t0, "round_wall_s": t2 - t0})
    return rows


def fedlottery_command(config: Path, rounds: int, out: Path, setting: str | None = None) -> list[str]:
    settings = ("strategies=[lotteryfl]", *LAST_ROUND_ONLY, *([setting] if setting else []))
    return [sys.executable, "-m", "fedlottery.cli", "run", str(config), "--rounds", str(rounds),
            *[item for s in settings for item in ("--set", s)], "--out", str(out), "--overwrite", "-q"]


def label(setting: str | None) -> str:
    return f"fedlottery, {setting}" if setting else "fedlottery"


def fedlottery_run(config: Path, rounds: int, env: dict[str, str], setting: str | None) -> list[dict]:
    """`fedlottery run` (with one `--variant` setting) for `rounds` rounds: one row per measured round, from
    rounds.csv's growth."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        proc = subprocess.Popen(fedlottery_command(config, rounds, out, setting), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        meter, marks = TreeMeter(proc.pid), {}
        while proc.poll() is None:
            meter.poll()
            for seen in range(1, rows_in(out / "rounds.csv") + 1):
                marks.setdefault(seen, (meter.cpu_seconds(), time.perf_counter()))
            time.sleep(POLL_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{label(setting)} run failed: {proc.stderr.read()[-2000:]}")
        with (out / "rounds.csv").open() as fh:
            written = {int(r["round"]): r for r in csv.DictReader(fh)}
    rows = []
    for rnd in range(2, rounds):
        (cpu0, t0), (cpu1, t1) = marks[rnd - 1], marks[rnd]
        rows.append({"code": label(setting), "round": rnd, "clients": int(written[rnd]["clients"]),
                     "evaluated": int(written[rnd]["evaluated_clients"] or 0),
                     "train_cpu_s": cpu1 - cpu0, "round_cpu_s": cpu1 - cpu0,
                     "train_wall_s": t1 - t0, "round_wall_s": t1 - t0})
    return rows


def per_run(rows: list[dict], code: str, key: str) -> list[float]:
    """Each repeat's median over its measured rounds, in repeat order."""
    repeats = sorted({r["repeat"] for r in rows})
    return [statistics.median(r[key] for r in rows if r["code"] == code and r["repeat"] == i) for i in repeats]


def paired(rows: list[dict], code: str, key: str) -> list[float]:
    """`code` / the authors', per repeat."""
    return [ours / theirs for ours, theirs in zip(per_run(rows, code, key), per_run(rows, "authors", key))]


def verdict(rows: list[dict], code: str) -> str:
    """The target, against their training phase, for one of fedlottery's runs (the config as shipped, or a variant:
    with their 36 training images a client, the closer to equal work)."""
    ratio = statistics.median(paired(rows, code, "train_cpu_s"))
    return (f"Target: a Table-2 training round <= {TARGET}x the authors' CPU-s, {code} against their training "
            f"phase: **{'met' if ratio <= TARGET else 'not met'}** ({ratio:.3f}x).")


def summarise(rows: list[dict], commands: dict[str, str], loads: tuple[float, float], rounds: int) -> str:
    codes = list(dict.fromkeys(r["code"] for r in rows))
    lines = [f"`{commands['benchmark']}` ({len(per_run(rows, 'authors', 'train_cpu_s'))} repeats, each the "
             f"authors' run, then fedlottery's; rounds 2 .. {rounds - 1} of {rounds} measured, medians over rounds, "
             f"then over repeats; one thread per process; 1-minute load average {loads[0]:.2f} at the start, "
             f"{loads[1]:.2f} at the end)", ""]
    lines += [f"- {code}: `{command}`" for code, command in commands.items() if code != "benchmark"]
    lines += ["", "| code | training phase CPU-s per round | whole round CPU-s per round | wall s per round | "
              "clients trained per round | clients evaluated per round | fedlottery / authors, training phase "
              "(per repeat) | fedlottery / authors, whole round (per repeat) |", "|---|---|---|---|---|---|---|---|"]
    for code in codes:
        mine = [r for r in rows if r["code"] == code]
        cells = [statistics.median(per_run(rows, code, k)) for k in ("train_cpu_s", "round_cpu_s", "round_wall_s")]
        cells = [f"{v:.2f}" for v in cells] + [f"{statistics.median(r[k] for r in mine):.0f}"
                                               for k in ("clients", "evaluated")]
        for key in ("train_cpu_s", "round_cpu_s"):
            ratios = paired(rows, code, key)
            cells.append("" if code == "authors" else
                         f"{statistics.median(ratios):.3f}x ({', '.join(f'{v:.3f}' for v in ratios)})")
        lines.append(f"| {code} | " + " | ".join(cells) + " |")
    lines += [""] + [verdict(rows, code) for code in codes if code != "authors"] + ["", NOTES.rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", required=True, help="a checkout of github.com/charleslipku/LotteryFL")
    parser.add_argument("--authors-python", required=True, help="an interpreter whose environment runs their code")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--config", default="configs/table2_mnist.yaml")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also run fedlottery with this one setting changed (repeatable), e.g. "
                             "partition.val_fraction=0.1 for their 36 training images a client")
    parser.add_argument("--out", default=str(OUT), help="OUT.csv and OUT.md are written")
    args = parser.parse_args()
    if args.rounds < 3:
        sys.exit("--rounds: at least 3 (rounds 2 .. R-1 are measured)")
    from fedlottery.runtime.experiment import load_experiment

    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **ONE_THREAD}
    env.setdefault("FEDLOTTERY_DATA", str(ROOT.parent / "shared" / "data"))
    raw, repo = Path(env["FEDLOTTERY_DATA"]) / "MNIST" / "raw", Path(args.authors_repo).resolve()
    config = Path(args.config).resolve()
    check_authors(repo, args.authors_python, raw)
    cfg = load_experiment(config, strategies=["lotteryfl"])
    their_args = their_arguments(cfg, args.rounds)
    settings = [None, *args.variant]
    rows, start_load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = their_workspace(Path(tmp), repo, raw)
        for repeat in range(args.repeats):
            runs = [lambda: authors_run(args.authors_python, src, their_args, cfg, args.rounds)]
            runs += [lambda s=s: fedlottery_run(config, args.rounds, env, s) for s in settings]
            for run in runs:
                for row in run():
                    rows.append({"repeat": repeat, **row})
                    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    commands = {"benchmark": shlex.join(["python", "benchmarks/authors_lotteryfl.py", *sys.argv[1:]]),
                "authors": shlex.join(["python", "-u", "lotteryFL.py", *their_args])}
    commands.update({label(s): shlex.join(["fedlottery", *fedlottery_command(Path(args.config), args.rounds,
                                                                           Path("TMP"), s)[3:]]) for s in settings})
    table = summarise(rows, commands, (start_load, os.getloadavg()[0]), args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results(Path(args.out), rows, table)


if __name__ == "__main__":
    main()
