"""Clients trained per second against client actors per GPU: how far sharing one GPU between actors pays.

LotteryFL's CNN on MNIST-sized inputs (1x28x28, 10 classes), E local epochs (SGD lr 0.01, momentum 0.5, batch
32, under a mask) on 40 or 600 images per client, then every client's evaluation; 1, 2, 4, 8 actors on one GPU
(Ray's `num_gpus` per actor 1, 0.5, 0.25, 0.125). Small clients are launch-bound on a GPU (a 40-image client is
two 32-image batches an epoch), so more actors per GPU should help most there. Two ways to measure:

  --modes flower  the whole path: fedlottery + Flower + Ray, `simulation.num_gpus` = 1/actors, `actors` set,
                  real MNIST (`--data-root`, else $FEDLOTTERY_DATA / ../shared/data), LotteryFL, 100 clients,
                  `--clients` per round, 3 rounds (the first warms the actors up and is not counted), one
                  evaluation of all 100 clients at the end (`test: matched`, the 10,000 test images spread over
                  them). clients/s = clients per round / training-round wall time; eval images/s = test images
                  / evaluation wall time. Each setting in a fresh process (its own Ray).
  --modes torch   no Flower, no Ray (the GPU machine that is sometimes lent has torch but neither): N worker
                  processes (torch.multiprocessing, spawn) share the GPU and train their share of `--clients`
                  clients the way a client actor does: a fresh model from theta_0, moved to the GPU with the
                  client's data, fedlottery.training.train under a mask for E epochs, the weights back to the CPU;
                  then each evaluates `--test-images` images per client with fedlottery.training.evaluate.
                  Synthetic images (throughput does not depend on their content). Needs torch, numpy, pyyaml.
                  clients/s = clients / (last worker's end - common start), after one warm-up client each.

    python benchmarks/gpu_throughput.py                  # both modes where possible -> results/gpu_throughput.csv
    python benchmarks/gpu_throughput.py --modes torch --actors 1,2,4,8 --images 40,600 --epochs 10
    python benchmarks/gpu_throughput.py --cpu-smoke      # no GPU: the torch mode on the CPU, seconds, prints only

Without a CUDA GPU (and without --cpu-smoke) it prints "no CUDA GPU: nothing measured" and exits 0.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "gpu_throughput.csv"
COLUMNS = ["mode", "device", "actors", "num_gpus_per_actor", "images_per_client", "train_images_per_client",
           "epochs", "clients", "train_s", "clients_per_s", "speedup_vs_1_actor", "eval_images", "eval_s",
           "eval_images_per_s"]
MODEL = "lotteryfl_cnn"
INPUT = (1, 28, 28)
SEED = 0


# ---- torch mode: N processes share one device, no Flower, no Ray ---------------------------------------------
def _local_config(epochs: int):
    from fedlottery.config import LocalTrainingConfig

    return LocalTrainingConfig(optimizer="sgd", lr=0.01, momentum=0.5, batch_size=32, epochs=epochs)


def _torch_worker(rank: int, job: dict, barrier, results) -> None:
    """One stand-in for a client actor: trains and evaluates its clients in turn on job["device"]."""
    try:
        from fedlottery.models import build_model, clone_state, prunable_names
        from fedlottery.sparsity import Mask
        from fedlottery.training import evaluate, train

        torch.set_num_threads(1)
        device = torch.device(job["device"])
        torch.manual_seed(SEED)
        template = build_model(MODEL, INPUT, 10)
        theta0 = clone_state(template)
        params = dict(template.named_parameters())
        mask = Mask.ones({n: params[n].shape for n in prunable_names(template)})
        local = _local_config(job["epochs"])
        g = torch.Generator().manual_seed(SEED + 1 + rank)
        n, t = job["train_images"], job["test_images"]
        clients = [(torch.randn(n, *INPUT, generator=g), torch.randint(0, 10, (n,), generator=g))
                   for _ in range(job["clients"][rank] + 1)]  # +1: the warm-up client
        test = (torch.randn(t, *INPUT, generator=g), torch.randint(0, 10, (t,), generator=g))

        def one_client(x, y, seed):
            model = build_model(MODEL, INPUT, 10)
            model.load_state_dict(theta0)
            model.to(device)
            data = (x.to(device), y.to(device))
            train(model, data, local.as_training(), torch.Generator().manual_seed(seed), mask=mask,
                  epochs=local.epochs)
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}  # what goes into the reply

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        trained = one_client(*clients[0], 0)  # warm-up: CUDA context, kernels, the optimizer's first use
        model = build_model(MODEL, INPUT, 10)
        model.load_state_dict(trained)
        model.to(device)
        evaluate(model, (test[0].to(device), test[1].to(device)))
        sync()
        barrier.wait()
        start = time.monotonic()
        for i, (x, y) in enumerate(clients[1:], start=1):
            trained = one_client(x, y, i)
        sync()
        train_end = time.monotonic()
        barrier.wait()
        eval_start = time.monotonic()
        for _ in clients[1:]:  # each client: its model to the device, its test images through it
            model = build_model(MODEL, INPUT, 10)
            model.load_state_dict(trained)
            model.to(device)
            evaluate(model, (test[0].to(device), test[1].to(device)))
        sync()
        results.put({"rank": rank, "start": start, "train_end": train_end, "eval_start": eval_start,
                     "eval_end": time.monotonic(), "clients": len(clients) - 1})
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails loudly
        results.put({"rank": rank, "error": f"{type(err).__name__}: {err}"})
        barrier.abort()


def measure_torch(device: str, actors: int, images: int, epochs: int, clients: int, test_images: int,
                  val_fraction: float) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    train_images = images - round(images * val_fraction)  # what a LotteryFL client trains on (the rest: its gate)
    share = [clients // actors + (1 if r < clients % actors else 0) for r in range(actors)]
    job = {"device": device, "epochs": epochs, "train_images": train_images, "test_images": test_images,
           "clients": share}
    barrier, results = ctx.Barrier(actors), ctx.Queue()
    procs = [ctx.Process(target=_torch_worker, args=(r, job, barrier, results)) for r in range(actors)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a worker failed: {errors[0]}")
    train_s = max(r["train_end"] for r in reports) - min(r["start"] for r in reports)
    eval_s = max(r["eval_end"] for r in reports) - min(r["eval_start"] for r in reports)
    done = sum(r["clients"] for r in reports)
    return {"mode": "torch", "device": device, "actors": actors, "num_gpus_per_actor": round(1 / actors, 4),
            "images_per_client": images, "train_images_per_client": train_images, "epochs": epochs,
            "clients": done, "train_s": round(train_s, 3), "clients_per_s": round(done / train_s, 3),
            "eval_images": done * test_images, "eval_s": round(eval_s, 3),
            "eval_images_per_s": round(done * test_images / eval_s, 1)}


# ---- flower mode: fedlottery + Flower + Ray, simulation.num_gpus -------------------------------------------------
ROUNDS = 3
FLOWER_CLIENTS = 100


def _flower_config(actors: int, images: int, epochs: int, per_round: int, data_root: str | None,
                   val_fraction: float) -> dict:
    return {
        "seed": SEED, "strategies": ["lotteryfl"], "rounds": ROUNDS, "clients_per_round": per_round,
        "data": {"dataset": "mnist", **({"root": data_root} if data_root else {})},
        "model": {"name": MODEL, "init": "default"},
        "partition": {"scheme": "shards", "num_clients": FLOWER_CLIENTS, "shard_size": images // 2,
                      "shards_per_client": 2, "val_fraction": val_fraction, "test": "matched"},
        "local": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "batch_size": 32, "epochs": epochs},
        "evaluation": {"every": ROUNDS, "global_model": False},
        "strategy_options": {"lotteryfl": {"acc_threshold": 0.5, "prune_rate": 0.2, "target_density": 0.1}},
        "simulation": {"num_cpus": 1, "num_gpus": 1 / actors, "actors": actors, "round_timeout": 3600},
        "checkpoint": {"every": 0},
    }


def _flower_child(config_json: str, out_dir: str) -> None:
    """Runs in a fresh process: one fedlottery run, then the number of test images its evaluation used."""
    from fedlottery.config import FederatedConfig, from_dict
    from fedlottery.data import load_dataset, make_partitions
    from fedlottery.runtime.simulation import run_federated

    cfg = from_dict(FederatedConfig, json.loads(config_json))
    run_federated(cfg, Path(out_dir), log=lambda line: print(line, file=sys.stderr))
    splits = make_partitions(load_dataset(cfg.data), cfg.partition, cfg.seed)
    Path(out_dir, "eval_images.json").write_text(json.dumps(sum(len(s.test) for s in splits)))


def measure_flower(actors: int, images: int, epochs: int, per_round: int, data_root: str | None,
                   val_fraction: float) -> dict:
    from fedlottery.runs.results import read_csv

    config = _flower_config(actors, images, epochs, per_round, data_root, val_fraction)
    with tempfile.TemporaryDirectory(prefix="gpu_throughput_") as out:
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run([sys.executable, __file__, "--flower-child", json.dumps(config), out], check=True, env=env)
        rows = read_csv(Path(out) / "rounds.csv")
        eval_images = json.loads(Path(out, "eval_images.json").read_text())
    failed = sum(r["failed_train_clients"] + (r["failed_eval_clients"] or 0) for r in rows)
    if failed:
        raise RuntimeError(f"{failed} client calls failed with {actors} actors per GPU; see the log above")
    train = [r["wall_s"] - (r["eval_wall_s"] or 0) for r in rows[1:]]  # round 1 starts the actors
    train_s = statistics.median(train)
    eval_s = sum(r["eval_wall_s"] or 0 for r in rows)
    return {"mode": "flower", "device": "cuda", "actors": actors, "num_gpus_per_actor": round(1 / actors, 4),
            "images_per_client": images, "train_images_per_client": images - round(images * val_fraction),
            "epochs": epochs, "clients": per_round, "train_s": round(train_s, 3),
            "clients_per_s": round(per_round / train_s, 3), "eval_images": eval_images, "eval_s": round(eval_s, 3),
            "eval_images_per_s": round(eval_images / eval_s, 1) if eval_s else float("nan")}


# ---- driver ---------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _table(rows: list[dict]) -> str:
    head = ["mode", "device", "actors", "num_gpus/actor", "images/client", "epochs", "clients", "train s",
            "clients/s", "vs 1 actor", "eval images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(v) for v in (
            r["mode"], r["device"], r["actors"], f"{r['num_gpus_per_actor']:g}", r["images_per_client"], r["epochs"],
            r["clients"], r["train_s"], r["clients_per_s"], f"{r['speedup_vs_1_actor']:.2f}x",
            r["eval_images_per_s"])) + " |")
    return "\n".join(lines)


def _speedups(rows: list[dict]) -> None:
    base = {}
    for r in rows:
        key = (r["mode"], r["images_per_client"], r["epochs"])
        if r["actors"] == 1 or key not in base:
            base.setdefault(key, r["clients_per_s"])
        r["speedup_vs_1_actor"] = r["clients_per_s"] / base[key]


def _flower_available() -> str | None:
    """None when flwr and ray import, else why not."""
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="torch,flower", help="torch, flower or both (default)")
    parser.add_argument("--actors", default="1,2,4,8", help="client actors sharing one GPU")
    parser.add_argument("--images", default="40,600", help="images per client (LotteryFL: 40; MNIST/100: 600)")
    parser.add_argument("--epochs", type=int, default=10, help="local epochs E (LotteryFL: 10)")
    parser.add_argument("--clients", type=int, default=40, help="clients trained per setting (flower: per round)")
    parser.add_argument("--test-images", type=int, default=100, help="torch mode: test images per client")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="a client's validation share")
    parser.add_argument("--data-root", default=None, help="flower mode: the MNIST root (default: the usual search)")
    parser.add_argument("--out", type=Path, default=None, help=f"CSV to write (default on a GPU: {OUT})")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU needed: the torch mode on the CPU, tiny")
    parser.add_argument("--flower-child", nargs=2, metavar=("CONFIG_JSON", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flower_child:
        _flower_child(*args.flower_child)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"torch", "flower"}
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; use torch, flower or torch,flower")
    if args.cpu_smoke:
        device, modes, out = "cpu", ["torch"], args.out
        actors, images, epochs, clients, test_images = [1, 2], [40], 1, 4, 100
        print(f"CPU smoke test (torch {torch.__version__}, no GPU needed): the torch mode on the CPU, "
              f"{actors} workers, {images[0]} images/client, E={epochs}, {clients} clients; proves the script runs, "
              "measures nothing about GPUs", flush=True)
    else:
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            print(f"no CUDA GPU: nothing measured (torch {torch.__version__}, {build}); "
                  "run it where a GPU is, or try --cpu-smoke")
            return 0
        device, out = "cuda", args.out or OUT
        actors, images, epochs, clients, test_images = (_ints(args.actors), _ints(args.images), args.epochs,
                                                        args.clients, args.test_images)
        print(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), torch {torch.__version__}",
              flush=True)
    if "flower" in modes and (why := _flower_available()):
        print(f"flower mode skipped: {why} (the torch mode measures the same local training)", flush=True)
        modes.remove("flower")

    rows = []
    for mode in modes:
        for n_images in images:
            for n_actors in actors:
                started = time.perf_counter()
                if mode == "torch":
                    row = measure_torch(device, n_actors, n_images, epochs, clients, test_images, args.val_fraction)
                else:
                    row = measure_flower(n_actors, n_images, epochs, clients, args.data_root, args.val_fraction)
                rows.append(row)
                print(f"{mode}: {n_actors} actor(s), {n_images} images/client: {row['clients_per_s']} clients/s, "
                      f"{row['eval_images_per_s']} eval images/s ({time.perf_counter() - started:.1f} s)", flush=True)
    if not rows:
        print("nothing measured")
        return 0
    _speedups(rows)
    print()
    print(_table(rows))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: r[k] if k != "speedup_vs_1_actor" else round(r[k], 3) for k in COLUMNS} for r in rows)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
