"""A Ray cluster job as Ray users type it: `ray start --head` plus a worker node on this machine, then
`ray job submit --working-dir . -- python -m fedlottery.cli run CONFIG --out DIR`; the job attaches to the
cluster through the RAY_ADDRESS Ray gives it, its clients run on both nodes, its results land on storage both
nodes see, and `ray job logs` shows its output. Needs `ray[default]` (the `cluster` extra, which `make test`
installs); skipped with the reason otherwise."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_ray_cluster import RAY_CLI, _client_calls_per_node, _free_port, started_two_node_cluster

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 400


def _job_api_missing() -> str | None:
    try:
        import ray.dashboard  # noqa: F401
        from ray.job_submission import JobSubmissionClient  # noqa: F401
        import aiohttp  # noqa: F401  (the dashboard's web server: absent from plain `ray`)
    except ImportError as err:
        return f"ray[default] is not installed ({err}); pip install 'fedlottery[cluster]'"
    return None


def _ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY_CLI), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _wait_for_dashboard(url: str, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.skip(f"the head's dashboard did not answer at {url} within {timeout:.0f}s")
            time.sleep(1)


@pytest.mark.slow
def test_ray_job_submit_runs_fedlottery_on_a_two_node_cluster(tmp_path):
    missing = _job_api_missing()
    if missing:
        pytest.skip(missing)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 1, "strategies": ["lotteryfl"], "rounds": 2, "clients_per_round": 2,
        "data": {"dataset": "digits"}, "model": {"name": "mlp_digits"},
        "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 40, "shards_per_client": 2,
                      "val_fraction": 0.25},
        "local": {"lr": 0.05, "epochs": 1}, "simulation": {"num_cpus": 1}}))
    out = tmp_path / "results"  # on storage every node of this one-machine cluster sees
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with started_two_node_cluster(dashboard_port=port) as cluster:
        _wait_for_dashboard(url)
        submitted = _ray("job", "submit", "--address", url, "--working-dir", str(ROOT), "--submission-id",
                         "fedlottery-test", "--", sys.executable, "-m", "fedlottery.cli", "run", str(config),
                         "--out", str(out), "-q", timeout=JOB_TIMEOUT_S)
        logs = _ray("job", "logs", "--address", url, "fedlottery-test")
        status = _ray("job", "status", "--address", url, "fedlottery-test")
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "SUCCEEDED" in status.stdout + status.stderr, status.stdout + status.stderr
        assert "lotteryfl" in logs.stdout, logs.stdout[-2000:]  # the job's own output, through `ray job logs`
        nodes, actors, calls = _client_calls_per_node(cluster.address)
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",lotteryfl," in r for r in rows[1:])
    assert set(nodes) == {"head_only", "worker_node"}, nodes
    assert calls[nodes["head_only"]] >= 1 and calls[nodes["worker_node"]] >= 1, (nodes, calls)
