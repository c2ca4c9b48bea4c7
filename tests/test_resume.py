"""A real federated run killed with SIGKILL after round k, resumed with `--resume`, gives the same result
files as an uninterrupted run (wall times aside); and the same seed gives the same bytes whatever the number
of client actors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tiny_config, tmp_path: Path, actors: int = 2) -> Path:
    cfg = tiny_config(
        seed=3, strategies=["lotteryfl", "fedavg"], rounds=4, clients_per_round=3, model={"name": "cnn_digits_bn"},
        partition={"num_clients": 6, "shard_size": 30},
        strategy_options={"lotteryfl": {"acc_threshold": 0.0, "prune_rate": 0.3, "target_density": 0.3}},
        evaluation={"every": 2, "deployed": True},
        simulation={"actors": actors},
    )
    path = tmp_path / f"config_{actors}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fedlottery(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = env or {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "fedlottery.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _rows(out: Path) -> int:
    path = out / "rounds.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.slow
def test_a_run_killed_after_round_k_resumes_to_the_same_files(tmp_path, tiny_config, run_files):
    config = _config(tiny_config, tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _finish(_fedlottery("run", str(config), "--out", str(whole)))
    proc = _fedlottery("run", str(config), "--out", str(killed))
    deadline = time.monotonic() + 240
    while _rows(killed) < 5 and proc.poll() is None and time.monotonic() < deadline:  # into the 2nd strategy
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((killed / "summary.json").read_text()) if (killed / "summary.json").exists() else {}
    assert "fedavg" not in partial.get("strategies", {})  # killed inside the second strategy
    _finish(_fedlottery("run", str(config), "--out", str(killed), "--resume"))
    assert run_files(killed) == run_files(whole)


@pytest.mark.slow
def test_one_and_two_actors_give_the_same_bytes(tmp_path, tiny_config, run_files):
    outs = []
    for actors in (1, 2):
        out = tmp_path / f"actors{actors}"
        _finish(_fedlottery("run", str(_config(tiny_config, tmp_path, actors)), "--out", str(out)))
        outs.append(run_files(out))
    outs[0]["summary.json"]["config"]["simulation"].pop("actors")
    outs[1]["summary.json"]["config"]["simulation"].pop("actors")
    assert outs[0] == outs[1]


def _actor_pids(marker: str) -> list[int]:
    """The Ray client-actor processes started for the run whose environment carries `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ClientAppActor")
                    and marker.encode() in (proc / "environ").read_bytes()):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


@pytest.mark.slow
def test_a_lost_ray_worker_stops_the_run_and_resume_gives_the_same_files(tmp_path, tiny_config, run_files):
    """An actor killed mid-run (as Ray's OOM killer does) must not leave the run going on with clients silently
    missing: it stops with exit 2 before using that round, and --resume gives the uninterrupted run's files."""
    config = _config(tiny_config, tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _finish(_fedlottery("run", str(config), "--out", str(whole)))
    marker = f"FEDLOTTERY_TEST_RUN={os.getpid()}-{time.monotonic_ns()}"
    name, value = marker.split("=")
    proc = _fedlottery("run", str(config), "--out", str(broken), env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
                                                                      name: value})
    deadline = time.monotonic() + 240
    while _rows(broken) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    actors = _actor_pids(marker)
    assert proc.poll() is None and actors, "the run ended (or had no actors) before one could be killed"
    os.kill(actors[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 2, out[-3000:]
    error = [line for line in out.splitlines() if line.startswith("fedlottery: error:")]
    assert len(error) == 1 and "Ray lost the worker" in error[0] and "--resume" in error[0], out[-3000:]
    assert _rows(broken) < 8  # it stopped: the whole run has 8 rows (2 strategies x 4 rounds)
    _finish(_fedlottery("run", str(config), "--out", str(broken), "--resume"))
    assert run_files(broken) == run_files(whole)
