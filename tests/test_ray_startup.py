"""Ray's local start-up times out on a loaded machine (its raylet has 30 s to register): start_ray retries it
with backoff, and when every attempt fails says so in one line with the cause and the fix."""
from __future__ import annotations

import pytest

from fedlottery.cli import main
from fedlottery.errors import ClusterError, UserError
from fedlottery.runtime import ray_runtime

TIMEOUT = "The current node timed out during startup. This could happen because some of the raylet failed to startup"


class FlakyRay:
    """A stand-in for the ray module whose init fails `failures` times with Ray's start-up timeout."""

    def __init__(self, failures: int, error: Exception | None = None):
        self.failures, self.error = failures, error or Exception(TIMEOUT)
        self.inits, self.shutdowns = 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise self.error

    def shutdown(self):
        self.shutdowns += 1


def test_a_start_up_timeout_is_retried_with_backoff():
    ray, waits = FlakyRay(2), []
    ray_runtime._init_local(ray, {"address": "local"}, sleep=waits.append)
    assert ray.inits == 3 and ray.shutdowns == 2  # what half-started is stopped before each retry
    assert waits == [ray_runtime.START_BACKOFF_S, 2 * ray_runtime.START_BACKOFF_S]


@pytest.mark.parametrize("error", [Exception(TIMEOUT), TimeoutError("Timed out after 60 seconds waiting for node"),
                                   ConnectionError("Failed to connect to GCS")])
def test_a_start_up_that_always_times_out_is_one_line_with_cause_and_fix(error):
    ray, waits = FlakyRay(99, error), []
    with pytest.raises(ClusterError) as err:
        ray_runtime._init_local(ray, {"address": "local"}, sleep=waits.append)
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert f"did not start in {ray_runtime.START_ATTEMPTS} attempts" in message and str(error)[:30] in message
    assert "free some" in message and "run the same command again" in message
    assert ray.inits == ray_runtime.START_ATTEMPTS and len(waits) == ray_runtime.START_ATTEMPTS - 1


def test_other_failures_are_not_retried():
    ray = FlakyRay(1, ValueError("bad argument num_cpus"))
    with pytest.raises(ValueError):
        ray_runtime._init_local(ray, {}, sleep=lambda s: None)
    assert ray.inits == 1


def test_the_command_line_prints_it_as_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import ray
    import yaml


    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", FlakyRay(99).init)
    monkeypatch.setattr("time.sleep", lambda s: None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "strategies": ["fedavg"], "rounds": 1, "clients_per_round": 2, "data": {"dataset": "digits"},
        "model": {"name": "mlp_digits"}, "simulation": {"num_cpus": 1},
        "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 30, "shards_per_client": 2}}))
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fedlottery: error:")]
    assert len(lines) == 1 and "did not start in 3 attempts" in lines[0] and "timed out during startup" in lines[0]


def test_a_failed_background_start_is_raised_by_wait(monkeypatch):
    def refuse(cfg, state_dir=None):
        raise ClusterError("no Ray here")

    monkeypatch.setattr(ray_runtime, "start_ray", refuse)
    start = ray_runtime.BackgroundStart(object())
    with pytest.raises(ClusterError, match="no Ray here"):
        start.wait()


@pytest.mark.slow
def test_ray_started_in_the_background_outlives_the_start(tmp_path):
    """Ray's processes die with the thread that spawned them (PR_SET_PDEATHSIG): after the start, tasks still run
    seconds later, and the process exits cleanly."""
    import subprocess
    import sys

    script = (
        "import time, ray\n"
        "from fedlottery.config import FederatedConfig, from_dict\n"
        "from fedlottery.runtime.ray_runtime import BackgroundStart\n"
        "cfg = from_dict(FederatedConfig, {'simulation': {'num_cpus': 1, 'actors': 1}})\n"
        "BackgroundStart(cfg).wait()\n"
        "time.sleep(3)\n"
        "print(ray.get(ray.remote(lambda: 41 + 1).remote()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "42"
    assert "SIGTERM handler is not set" not in out.stderr


@pytest.mark.slow
def test_a_private_rays_workers_start_with_the_client_actors_modules_imported():
    """Client actors start warm: the workers of a private Ray import torch, Flower's actor module and the
    ClientApp as they start (Ray's preload), so an actor's first client does not wait for them."""
    import ast
    import os
    import subprocess
    import sys

    script = (
        "import sys, ray\n"
        "from fedlottery.config import FederatedConfig, from_dict\n"
        "from fedlottery.runtime.ray_runtime import ACTOR_MODULES, start_ray\n"
        "start_ray(from_dict(FederatedConfig, {'simulation': {'num_cpus': 1, 'actors': 1}}))\n"
        "def imported(names):\n"
        "    import sys\n"
        "    found = [n for n in names if n in sys.modules]\n"
        "    import torch\n"
        "    from fedlottery.runtime.client_cache import threads_as_ray_assigned\n"
        "    before = torch.get_num_threads()\n"
        "    threads_as_ray_assigned()\n"
        "    return found, before, torch.get_num_threads()\n"
        "print(ray.get(ray.remote(num_cpus=1)(imported).remote(ACTOR_MODULES)))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", ray_runtime.PRELOAD_ENV)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # torch, loaded before Ray assigned the worker, took a thread per core; the client then applies the one
    # thread Ray gives a 1-CPU actor
    found, before, after = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert found == list(ray_runtime.ACTOR_MODULES)
    assert (before, after) == (ray_runtime.machine_cpus(), 1)
