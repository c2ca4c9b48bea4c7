"""One run per output directory, and nothing in it deleted without --overwrite.

A second run on a directory in use is refused with one line naming the first (pid, host, since when), exit 2,
before it touches anything; a lock left by a killed run does not block the next one; a fresh run into a
directory holding an earlier run's client state (or results) is refused, and --overwrite removes them only
once the run is known to start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedlottery.cli import main
from fedlottery.runs.lock import LOCK_FILE, RunLocked, check_unlocked, take_lock

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "seed": 0, "strategies": ["fedavg"], "rounds": 1, "clients_per_round": 2,
    "data": {"dataset": "digits"}, "model": {"name": "mlp_digits"},
    "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 30, "shards_per_client": 2,
                  "val_fraction": 0.2},
    "local": {"lr": 0.05, "epochs": 1},
    "simulation": {"num_cpus": 1},
}


def _config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return path


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fedlottery: error:")]


# ---- the lock itself ------------------------------------------------------------------------------------------
def test_a_held_lock_refuses_a_second_taker_naming_the_first(tmp_path):
    held = take_lock(tmp_path / "out", "fedlottery run first.yaml")
    try:
        for attempt in (check_unlocked, take_lock):
            with pytest.raises(RunLocked) as err:
                attempt(tmp_path / "out")
            message = str(err.value)
            assert f"pid {os.getpid()} on " in message and "since 20" in message and "first.yaml" in message
    finally:
        held.release()
    take_lock(tmp_path / "out").release()  # released: the next run takes it


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fedlottery.runs.lock import take_lock; "
                               "take_lock(sys.argv[1]); print('locked', flush=True); time.sleep(600)", str(out)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked):
            check_unlocked(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).exists()  # the stale file stays ...
    check_unlocked(out)  # ... and blocks nothing
    take_lock(out).release()


def test_the_command_line_refuses_a_directory_in_use_before_touching_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rounds.csv").write_text("round,strategy\n1,fedavg\n")
    held = take_lock(out, "fedlottery run other.yaml")
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            capsys.readouterr()
            assert main(["run", str(_config(tmp_path)), "--out", str(out), *extra]) == 2
            lines = _error_lines(capsys.readouterr().err)
            assert len(lines) == 1 and "another fedlottery run" in lines[0] and f"pid {os.getpid()}" in lines[0], lines
            assert (out / "rounds.csv").read_text() == "round,strategy\n1,fedavg\n"
    finally:
        held.release()


# ---- nothing deleted without --overwrite ----------------------------------------------------------------------
def test_a_fresh_run_onto_earlier_client_state_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "client_state" / "fedavg" / "0").mkdir(parents=True)
    (out / "client_state" / "fedavg" / "0" / "3.pt").write_bytes(b"earlier")
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "client_state" in lines[0] and "--overwrite" in lines[0], lines
    assert (out / "client_state" / "fedavg" / "0" / "3.pt").read_bytes() == b"earlier"


def test_overwrite_deletes_nothing_when_the_run_cannot_start(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "client_state").mkdir(parents=True)
    (out / "client_state" / "x.pt").write_bytes(b"earlier")
    bad_data = _config(tmp_path, data={"dataset": "mnist", "root": str(tmp_path / "nowhere")},
                       model={"name": "lenet_300_100"}, partition={**BASE["partition"], "shard_size": 10})
    assert main(["run", str(bad_data), "--out", str(out), "--overwrite"]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
    assert (out / "client_state" / "x.pt").read_bytes() == b"earlier"


def test_the_server_refuses_rather_than_deletes_client_state(tmp_path):
    from fedlottery.errors import ConfigError
    from fedlottery.runtime.server_app import _refuse_earlier_client_state

    _refuse_earlier_client_state(tmp_path / "client_state")  # none: fine
    (tmp_path / "client_state").mkdir()
    _refuse_earlier_client_state(tmp_path / "client_state")  # empty: fine
    (tmp_path / "client_state" / "fedavg").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        _refuse_earlier_client_state(tmp_path / "client_state")
    assert (tmp_path / "client_state" / "fedavg").is_dir()


# ---- two real runs on one directory ---------------------------------------------------------------------------
def _fedlottery(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedlottery.cli", *args], cwd=ROOT,
                            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_two_concurrent_runs_on_one_directory(tmp_path):
    """The first run (with --overwrite over an earlier run's client state, which it removes once it starts)
    keeps going; a second run on the same --out, with or without --overwrite, is refused in one line naming
    the first; the first's rounds.csv is whole at the end."""
    config = _config(tmp_path, rounds=6)
    out = tmp_path / "out"
    (out / "client_state").mkdir(parents=True)
    (out / "client_state" / "stale.pt").write_bytes(b"earlier")
    first = _fedlottery("run", str(config), "--out", str(out), "--overwrite")
    try:
        deadline = time.monotonic() + 240
        while f'"pid": {first.pid},' not in _text(out / LOCK_FILE) and time.monotonic() < deadline:
            time.sleep(0.05)  # the first has its lock (it starts Ray next, which takes a while)
        for extra in ([], ["--overwrite"]):
            second = _fedlottery("run", str(config), "--out", str(out), *extra)
            said, _ = second.communicate(timeout=120)
            assert second.returncode == 2, said
            lines = _error_lines(said)
            assert len(lines) == 1 and f"pid {first.pid} on " in lines[0] and "since" in lines[0], said
            print(" ".join(["$ fedlottery run", str(config), "--out", str(out), *extra]), "\n" + said)
        assert first.poll() is None, first.communicate()[0][-3000:]  # the refusals were made while it ran
        said, _ = first.communicate(timeout=600)
        assert first.returncode == 0, said[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not (out / "client_state" / "stale.pt").exists()  # --overwrite removed it once the run started
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 7 and [r.split(",")[0] for r in rows[1:]] == [str(r) for r in range(1, 7)]


def test_seeds_run_by_separate_processes_into_one_out_lock_only_their_own_seed(tmp_path):
    """`--seeds S --out DIR` locks DIR/seed<S>, not DIR: seeds run side by side in separate processes (and joined
    by `fedlottery merge` or the seeds table) do not block each other, while one seed cannot be run twice."""
    from fedlottery import cli

    out = tmp_path / "out"
    cli._ensure_writable(out, [out / "seed0"])
    try:
        check_unlocked(out / "seed1")  # another process's seed: free
        check_unlocked(out)
        with pytest.raises(RunLocked, match="another fedlottery run is using this directory"):
            check_unlocked(out / "seed0")
    finally:
        cli._release_locks()
