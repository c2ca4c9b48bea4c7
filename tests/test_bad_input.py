"""Bad input fails before anything starts: one line on stderr naming the key, the value and the fix, exit code 2,
no traceback, Ray not started, and an earlier run's results in the same --out untouched (even with --overwrite).

Most cases call `fedlottery.cli.main` in-process (fast); a subprocess is used where a real process matters (the
console script's stderr, Ctrl-C).
"""
from __future__ import annotations

import gzip
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedlottery.cli import _flower_quiet_after_ctrl_c, main

REPO = Path(__file__).resolve().parents[1]

# A small, quick federated job on the embedded digits data.
BASE = {
    "seed": 0,
    "strategies": ["fedavg"],
    "rounds": 1,
    "clients_per_round": 2,
    "data": {"dataset": "digits"},
    "model": {"name": "mlp_digits"},
    "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 30, "shards_per_client": 2,
                  "val_fraction": 0.2},
    "local": {"lr": 0.05, "epochs": 1},
    "simulation": {"num_cpus": 1},
}
EARLIER = {"rounds.csv": b"round,strategy\n1,fedavg\n", "clients.csv": b"strategy,partition_id\nfedavg,0\n",
           "summary.json": b'{"earlier": true}\n'}


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    """The results in out (its .lock, which a run refused after taking it leaves behind, is no result)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An --out directory holding an earlier run's results."""
    path = tmp_path / "out"
    path.mkdir()
    for name, content in EARLIER.items():
        (path / name).write_bytes(content)
    return path


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def refused(capsys, out: Path, argv: list[str], *fragments: str) -> str:
    """Run the command line, expect exit 2 with one line naming `fragments`; nothing started, nothing removed."""
    before = _snapshot(out) if out.is_dir() else None
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedlottery: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err
    assert not _ray_started()
    if before is not None:
        assert _snapshot(out) == before
    return lines[0]


def config_file(tmp_path: Path, changes: dict | None = None, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_merge(BASE, changes or {})))
    return path


def raw_file(tmp_path: Path, content: bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# ---- the config file itself ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "compare", "imp"])
@pytest.mark.parametrize("content,fragments", [
    (b"", ("is empty", "configs/default.yaml")),
    (b"# only a comment\n", ("is empty",)),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("is not UTF-8",)),
    (b"seed: 1\x00\x00", ("is a binary file",)),
    (b"- seed: 1\n- rounds: 2\n", ("top level must be a mapping", "got a list")),
    (b"seed: 1\nseed: 2\n", ("line 2: duplicate key 'seed' (first given at line 1)", "give each key once")),
    (b"seed: [1\n", ("not valid YAML at line",)),
])
def test_unreadable_config_files(tmp_path, out, capsys, command, content, fragments):
    path = raw_file(tmp_path, content)
    refused(capsys, out, [command, str(path), "--out", str(out), "--overwrite"], str(path), *fragments)


def test_duplicate_key_in_a_nested_mapping(tmp_path, out, capsys):
    path = raw_file(tmp_path, b"seed: 0\nlocal:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"],
            "line 5: duplicate key 'lr' (first given at line 3)")


def test_missing_config_file(tmp_path, out, capsys):
    refused(capsys, out, ["run", str(tmp_path / "nope.yaml"), "--out", str(out)], "config file not found")


# ---- values ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,fragments", [
    ("local: {lr: .inf}", ("local.lr: inf is not a finite number",)),
    ("local: {lr: -.inf}", ("local.lr: -inf is not a finite number",)),
    ("local: {lr: .nan}", ("local.lr: nan is not a finite number",)),
    ("partition: {alpha: .nan}", ("partition.alpha: nan is not a finite number",)),
    ("strategy_options: {lotteryfl: {acc_threshold: .inf}}",
     ("strategy_options.lotteryfl.acc_threshold: inf is not a finite number",)),
    ("simulation: {round_timeout: .inf}", ("simulation.round_timeout: inf is not a finite number",)),
    ("seed: -1", ("seed: -1 is not a seed", "[0, 4294967295]")),
    (f"seed: {2**70}", (f"seed: {2**70} is not a seed", "[0, 4294967295]")),
    ("seed: 4294967296", ("seed: 4294967296 is not a seed",)),
    ("strategies: [fedavg, fedavg]", ("strategies[1]: 'fedavg' is listed twice", "list each strategy once")),
    ("strategies: [fedavg, nope]", ("strategies[1]: unknown strategy 'nope'", "installed:")),
    ("data: {dataset: imagenet}", ("data.dataset: unknown data set 'imagenet'", "choose one of")),
    ("model: {name: vgg99}", ("model.name: unknown model 'vgg99'", "choose one of")),
    ("simulation: {device: gpu}", ("simulation.device: 'gpu' is not a device (a GPU is 'cuda')",)),
    ("simulation: {device: 'cuda:'}", ("simulation.device: 'cuda:' is not a device",)),
    ("simulation: {device: cuda, num_gpus: 0}", ("simulation.device: 'cuda' needs simulation.num_gpus > 0",)),
    ("simulation: {ray_address: auto}",
     ("simulation.ray_address: 'auto' is refused", "explicit address, e.g. 127.0.0.1:6379", "ray start --head")),
    ("simulation: {ray_address: headnode}", ("simulation.ray_address: 'headnode' is not a Ray address",)),
])
def test_bad_values_name_the_key(tmp_path, out, capsys, text, fragments):
    path = config_file(tmp_path, yaml.safe_load(text))
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"], *fragments)


@pytest.mark.parametrize("seeds,fragment", [
    ("[0, -1]", "seeds[1]: -1 is not a seed"),
    (f"[{2**70}]", f"seeds[0]: {2**70} is not a seed"),
    ("[3, 3]", "seeds[1]: seed 3 is listed twice"),
])
def test_imp_seeds(tmp_path, capsys, seeds, fragment):
    out = tmp_path / "imp"
    out.mkdir()
    (out / "levels.csv").write_bytes(b"earlier\n")
    path = raw_file(tmp_path, f"seeds: {seeds}\n".encode())
    refused(capsys, out, ["imp", str(path), "--out", str(out), "--overwrite"], fragment)


def test_imp_seed_override_is_checked(tmp_path, out, capsys):
    path = raw_file(tmp_path, b"seeds: [0]\n")
    refused(capsys, out, ["imp", str(path), "--out", str(out), "--seeds", "1,1"], "seeds[1]: seed 1 is listed twice")


def test_command_line_overrides_are_checked(tmp_path, out, capsys):
    path = config_file(tmp_path)
    refused(capsys, out, ["run", str(path), "--out", str(out), "--rounds", "0"], "rounds: must be >= 1")
    refused(capsys, out, ["compare", str(path), "--out", str(out), "--strategies", "fedavg,fedavg"],
            "strategies[1]: 'fedavg' is listed twice")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--set", "local.lr"], "--set 'local.lr'", "KEY=VALUE")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--set", "seed.x=1"], "seed is a value, not a section")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--set", "local.lrr=0.1"], "local", "lrr")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--set", "local.lr=-1"], "local.lr")
    refused(capsys, out, ["run", str(path), "--out", str(out), "--set", "rounds=[1"], "--set rounds", "not valid YAML")


@pytest.mark.parametrize("strategy,index", [("lotteryfl", 0), ("fedltn", 1), ("cell", 1)])
def test_validation_data_required_by_the_strategy(tmp_path, out, capsys, strategy, index):
    strategies = [strategy] if index == 0 else ["fedavg", strategy]
    path = config_file(tmp_path, {"strategies": strategies, "partition": {"val_fraction": 0}})
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"],
            "partition.val_fraction: 0 leaves the clients no validation data",
            f"strategies[{index}] = '{strategy}'", "set partition.val_fraction > 0")


def test_compare_checks_every_strategy_it_runs(tmp_path, out, capsys):
    path = config_file(tmp_path, {"partition": {"val_fraction": 0}})  # fedavg alone would not need it
    refused(capsys, out, ["compare", str(path), "--out", str(out)], "partition.val_fraction: 0")


# ---- what this machine can give -----------------------------------------------------------------------------
@pytest.mark.parametrize("simulation,patch,fragments", [
    ({"device": "cuda", "num_gpus": 1}, {"cuda_gpus": 0},
     ("simulation.device: 'cuda', but torch finds no usable CUDA GPU", "use device: cpu")),
    ({"num_gpus": 0.5}, {"cuda_gpus": 0},
     ("simulation.num_gpus: 0.5 GPUs per client actor, but torch finds no usable CUDA GPU", "num_gpus: 0")),
    ({"num_gpus": 2}, {"cuda_gpus": 1}, ("simulation.num_gpus: 2 GPUs per client actor, but this machine has 1",)),
    ({"device": "cuda:3", "num_gpus": 1}, {"cuda_gpus": 2}, ("simulation.device: 'cuda:3'", "has 2 CUDA GPU(s)")),
    ({"num_cpus": 1000}, {}, ("simulation.num_cpus: 1000 CPUs per client actor, but this machine has",)),
    ({"num_cpus": 1, "actors": 1000}, {}, ("simulation.actors: 1000 actors x simulation.num_cpus 1",
                                           "set simulation.actors <=")),
])
def test_resources_the_machine_lacks(tmp_path, out, capsys, monkeypatch, simulation, patch, fragments):
    import fedlottery.runtime.ray_runtime as runtime

    for name, value in patch.items():
        monkeypatch.setattr(runtime, name, lambda value=value: value)
    path = config_file(tmp_path, {"simulation": simulation})
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"], *fragments)


@pytest.mark.parametrize("text,gpus,fragment", [
    ("training: {device: gpu}", 1, "training.device: 'gpu' is not a device; use 'cpu', 'cuda' or 'cuda:<index>'"),
    ("training: {device: cuda}", 0, "training.device: 'cuda', but torch finds no usable CUDA GPU"),
    ("training: {device: 'cuda:2'}", 1, "training.device: 'cuda:2', but this machine has 1 CUDA GPU(s)"),
])
def test_imp_device(tmp_path, out, capsys, monkeypatch, text, gpus, fragment):
    import fedlottery.runtime.ray_runtime as runtime

    monkeypatch.setattr(runtime, "cuda_gpus", lambda: gpus)
    path = raw_file(tmp_path, text.encode() + b"\n")
    refused(capsys, out, ["imp", str(path), "--out", str(out), "--overwrite"], fragment)


def test_a_cluster_address_skips_the_local_resource_checks(monkeypatch):
    from fedlottery.runtime.experiment import experiment_from_dict
    from fedlottery.runtime.ray_runtime import check_resources, ray_init_args

    cfg = experiment_from_dict(_merge(BASE, {"simulation": {"num_cpus": 1000, "ray_address": "10.0.0.1:6379"}}))
    check_resources(cfg)  # the cluster, not this machine, says what it has
    assert ray_init_args(cfg)["address"] == "10.0.0.1:6379"
    local = experiment_from_dict(_merge(BASE, {"simulation": {"actors": 2, "num_cpus": 1}}))
    args = ray_init_args(local)
    assert args["address"] == "local" and args["num_cpus"] == 2 and args["include_dashboard"] is False
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_init_args(experiment_from_dict(BASE))["address"] == "local"


def test_ray_address_auto_from_the_environment(tmp_path, out, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    refused(capsys, out, ["run", str(config_file(tmp_path)), "--out", str(out), "--overwrite"],
            "$RAY_ADDRESS: 'auto' is refused", "127.0.0.1:6379")


def test_unreachable_cluster_fails_at_once(tmp_path, out, capsys, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    start = time.monotonic()
    refused(capsys, out, ["run", str(config_file(tmp_path)), "--out", str(out), "--overwrite"],
            f"cannot reach the Ray cluster at '127.0.0.1:{port}'", "ray start --head")
    assert time.monotonic() - start < 20


# ---- data -----------------------------------------------------------------------------------------------------
def _idx_gz(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _tiny_mnist(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("t10k", 50)):
        _idx_gz(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx_gz(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return raw


MNIST = {"data": {"dataset": "mnist"}, "model": {"name": "lenet_300_100"},
         "partition": {"shard_size": 10}}


def test_truncated_data_file(tmp_path, out, capsys):
    raw = _tiny_mnist(tmp_path / "data")
    target = raw / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    path = config_file(tmp_path, _merge(MNIST, {"data": {"root": str(tmp_path / "data")}}))
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"],
            f"corrupt idx file {target}: cannot decompress", "replace it with an intact copy")


def test_missing_data_root(tmp_path, out, capsys):
    path = config_file(tmp_path, _merge(MNIST, {"data": {"root": str(tmp_path / "dta")}}))
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"],
            f"data root {tmp_path / 'dta'} (given explicitly) does not exist", "data.root")


def test_imp_missing_data_root_keeps_earlier_results(tmp_path, capsys):
    out = tmp_path / "imp"
    out.mkdir()
    (out / "levels.csv").write_bytes(b"earlier\n")
    (out / "summary.json").write_bytes(b"{}\n")
    path = raw_file(tmp_path, f"data: {{dataset: mnist, root: {tmp_path / 'dta'}}}\nmodel: {{name: lenet_300_100}}\n"
                    .encode())
    refused(capsys, out, ["imp", str(path), "--out", str(out), "--overwrite"], "does not exist", "data.root")


def test_partition_the_data_cannot_satisfy(tmp_path, out, capsys):
    path = config_file(tmp_path, {"partition": {"num_clients": 500, "shards_per_client": 2}})
    refused(capsys, out, ["run", str(path), "--out", str(out), "--overwrite"],
            "partition: shards: 500 clients x 2 shards need 1000 shards", "lower num_clients")


# ---- the output directory -------------------------------------------------------------------------------------
def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_bytes(b"keep me\n")
    for command in ("run", "imp"):
        config = config_file(tmp_path) if command == "run" else raw_file(tmp_path, b"seeds: [0]\n", "i.yaml")
        refused(capsys, tmp_path, [command, str(config), "--out", str(target)], f"--out {target}: is a file")
        refused(capsys, tmp_path, [command, str(config), "--out", str(target / "sub")],
                f"--out {target / 'sub'}: {target} is a file")
    assert target.read_bytes() == b"keep me\n"


def test_out_not_writable(tmp_path, capsys):
    if os.geteuid() == 0:
        target = Path("/sys/fedlottery-test-out")  # root may write anywhere but here
        try:
            target.mkdir()
        except OSError:
            pass
        else:
            target.rmdir()
            pytest.skip("no unwritable directory available to root here")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "out"
    refused(capsys, tmp_path, ["run", str(config_file(tmp_path)), "--out", str(target)],
            f"--out {target}: not writable", "give a directory you can write to")


def test_results_without_overwrite(tmp_path, out, capsys):
    refused(capsys, out, ["run", str(config_file(tmp_path)), "--out", str(out)],
            f"--out {out}: already holds results (rounds.csv, clients.csv, summary.json)", "pass --overwrite")


@pytest.mark.slow
def test_overwrite_with_a_bad_data_root_keeps_the_earlier_run(tmp_path, capsys):
    """A real run's results, then --overwrite with a typo in the data root: exit 2, the files byte-identical."""
    out = tmp_path / "run"
    assert main(["run", str(config_file(tmp_path)), "--out", str(out)]) == 0
    before = _snapshot(out)
    assert {"rounds.csv", "clients.csv", "summary.json"} <= set(before)
    assert not _ray_started()  # the run's Ray is gone with it
    typo = config_file(tmp_path, _merge(MNIST, {"data": {"root": str(tmp_path / "shraed")}}), "typo.yaml")
    refused(capsys, out, ["run", str(typo), "--out", str(out), "--overwrite"], "does not exist", "data.root")
    assert _snapshot(out) == before


# ---- real processes -------------------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from fedlottery.cli import main; sys.exit(main())", *args]


def test_console_entry_point_prints_one_line(tmp_path, out):
    path = raw_file(tmp_path, b"local: {lr: .nan}\n")
    proc = subprocess.run(_cli("run", str(path), "--out", str(out), "--overwrite"), capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("fedlottery: error: local.lr: nan is not a finite number; give a "
                                                    "finite value (.inf / .nan are not allowed here)")
    assert _snapshot(out) == EARLIER


def _ray_processes(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def test_ctrl_c_mutes_flower_before_its_clean_up_logs_dying_actors():
    """Flower ends its actors on the interrupt, and every worker thread with a task in flight then logs a traceback
    (one CI run failed on exactly that): the logger must already be muted when the interrupt propagates, and a
    Ctrl-C that was ignored stays ignored."""
    flower = logging.getLogger("flwr")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, not a background job
    try:
        with pytest.raises(KeyboardInterrupt):
            with _flower_quiet_after_ctrl_c():
                assert not flower.disabled
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler runs at the next bytecode; this sleep is cut short
        assert flower.disabled
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        flower.disabled = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _flower_quiet_after_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert not flower.disabled and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        flower.disabled = False
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_ctrl_c_stops_the_run_keeps_rows_and_leaves_no_ray(tmp_path):
    """SIGINT to the process group (what a terminal's Ctrl-C sends) after round 1's row: exit 130 within
    seconds, rows kept, no Ray process of this run's session left."""
    ray_tmp = tempfile.mkdtemp(prefix="flr-int-", dir="/tmp")  # short: Ray's socket paths have a length limit
    out = tmp_path / "out"
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, FLWR_TELEMETRY_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(_cli("run", "configs/default.yaml", "--out", str(out)), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # Ctrl-C's default, as a terminal's foreground job has it: a suite started as a
                            # background job of a non-interactive shell inherits SIGINT ignored, and so would
                            # the run (that, not load, made this test fail in such CI runs)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        rounds = out / "rounds.csv"
        deadline = time.monotonic() + 240
        while not (rounds.exists() and len(rounds.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no round finished in time"
            time.sleep(0.2)
        rows = rounds.read_text().splitlines()
        assert _ray_processes(ray_tmp), "the run's Ray should be up"
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        # seconds, not the 600 s round timeout a stuck ServerApp thread would wait for
        _, err = proc.communicate(timeout=45)
        assert time.monotonic() - sent < 45
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "fedlottery: interrupted; rows already written are kept" in err
    assert "Traceback" not in err
    kept = rounds.read_text().splitlines()
    assert kept[: len(rows)] == rows and len(kept) >= 2
    for _ in range(20):  # Ray's processes go within a second or two of ray.shutdown()
        if not _ray_processes(ray_tmp):
            break
        time.sleep(0.5)
    assert _ray_processes(ray_tmp) == []


def test_a_reader_that_stops_early_gets_no_traceback():
    """`fedlottery report DIR | head -1`: the pipe closes while the table is printed; the CLI leaves quietly
    with Python's own exit code for that (1), instead of a BrokenPipeError traceback on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "fedlottery.cli", "strategies"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has printed anything: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
