"""Clusters and GPUs.

- A real two-node Ray cluster on this machine (`ray start --head` plus `ray start --address=...`, each with its own
  custom resource), a fedlottery run attached to it through `simulation.ray_address`, and proof from Ray's GCS that
  client actors were placed on, and ran ClientApp calls on, BOTH nodes.
- Device placement of a client given a GPU (no GPU here: torch.cuda is patched, and the "meta" device stands in
  for cuda to show that the model, theta_0 and every data split follow `device_for`).

Teardown never uses `ray stop`, which kills every Ray process of the user on the machine (other people's runs
included): each `ray start` runs in a session of its own (setsid), every process of the cluster (GCS, raylets,
agents, client workers) inherits that session id, and the fixture ends exactly the processes in those sessions:
SIGTERM, then SIGKILL after a grace period.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from fedlottery.runtime import client_app
from fedlottery.config import ConfigError, FederatedConfig, from_dict, to_dict
from fedlottery.runtime.ray_runtime import check_resources

RAY_CLI = Path(sys.executable).with_name("ray")  # the ray of this environment (the same code on both nodes)
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0


def _config(tiny_config, **simulation) -> FederatedConfig:
    """The tiny experiment (conftest's tiny_config) with LotteryFL and these simulation settings."""
    return from_dict(FederatedConfig, tiny_config(strategies=["lotteryfl"], simulation=simulation))


# ---- a two-node cluster from `ray start`, torn down by session id -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_in_sessions(sessions: set[int]) -> list[int]:
    """Live (non-zombie) processes whose session id is one of `sessions`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, sid = fields[0], int(fields[3])
        if sid in sessions and state != "Z" and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def _end_sessions(sessions: set[int], grace: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every process of these sessions, SIGKILL what is left after `grace` s; returns the pids killed."""
    if not sessions:
        return []
    pids = _processes_in_sessions(sessions)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_in_sessions(sessions):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _processes_in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
    return pids


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    sessions: set[int] = field(default_factory=set)


def _ray_start(cluster: Cluster, args: list[str], log_name: str) -> tuple[bool, str]:
    """Run `ray start ARGS` in a new session (recorded before waiting, so a half-started node is torn down too)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = cluster.temp_dir / log_name
    # Output to a file, not a pipe: the daemons `ray start` leaves behind would hold a pipe open.
    with open(log, "w") as out:
        proc = subprocess.Popen([str(RAY_CLI), "start", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    cluster.sessions.add(proc.pid)
    try:
        ok = proc.wait(timeout=START_TIMEOUT_S) == 0
    except subprocess.TimeoutExpired:
        ok = False
    return ok, log.read_text(errors="replace")


def _why(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no output"


@pytest.fixture
def two_node_cluster():
    """A head node (1 CPU, resource head_only) and a worker node (1 CPU, resource worker_node), private to the test."""
    with started_two_node_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def started_two_node_cluster(dashboard_port: int | None = None):
    """Start the two nodes (with the head's dashboard on `dashboard_port`, for job submission), yield, tear down.

    The temp dir is a short mkdtemp under /tmp, not pytest's tmp_path: Ray puts unix sockets under
    <temp-dir>/session_<date>_<pid>/sockets/, and a socket path may not exceed 107 bytes. A private temp dir also
    keeps `ray_current_cluster` out of /tmp/ray, so nobody's bare `ray.init()` can find this cluster. The worker
    node has a temp dir of its own (<temp-dir>/w), as a real node has its own disk: two nodes sharing one unpack
    a job's working directory into the same path, and the second unpacking deleted the directory the job's driver
    was running in (seen: `os.getcwd()` -> FileNotFoundError in the first job that called `ray.init`)."""
    if not RAY_CLI.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}")
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray runtime is already up in this process")
    cluster = Cluster("", Path(tempfile.mkdtemp(prefix="flray-", dir="/tmp")))
    dashboard = (["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
                 if dashboard_port else ["--include-dashboard=false"])
    try:
        port = _free_port()
        common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        ok, out = _ray_start(cluster, ["--head", f"--port={port}", *dashboard,
                                       f"--ray-client-server-port={_free_port()}",
                                       f"--dashboard-agent-listen-port={_free_port()}",
                                       '--resources={"head_only": 1}', f"--temp-dir={cluster.temp_dir}", *common],
                                      "head.log")
        if not ok:
            pytest.skip(f"`ray start --head` cannot start a Ray head node here: {_why(out)}")
        printed = re.search(r"ray start --address='([^']+)'", out)
        cluster.address = printed.group(1) if printed else f"127.0.0.1:{port}"
        ok, out = _ray_start(cluster, [f"--address={cluster.address}", f"--dashboard-agent-listen-port={_free_port()}",
                                       '--resources={"worker_node": 1}', f"--temp-dir={cluster.temp_dir / 'w'}",
                                       *common], "worker.log")
        if not ok:
            pytest.skip(f"`ray start --address={cluster.address}` cannot add a second node here: {_why(out)}")
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _end_sessions(cluster.sessions)
        left = _processes_in_sessions(cluster.sessions)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster survived teardown: {left}"


def _client_calls_per_node(address: str, wait_s: float = 15.0) -> tuple[dict[str, str], Counter, Counter]:
    """Ask the cluster's GCS (no dashboard needed) where Flower's client actors lived and where their `run`
    calls (one per ClientApp message: setup, train, evaluate) executed.

    Returns ({"head_only"|"worker_node": node id}, actors per node id, ClientAppActor.run calls per node id).
    Task events reach the GCS in batches (about once a second), so poll until both nodes show calls or `wait_s`."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        nodes = {role: node["NodeID"] for node in ray.nodes() for role in ("head_only", "worker_node")
                 if node["Alive"] and role in node["Resources"]}
        actors = Counter(a["Address"]["NodeID"] for a in state.actor_table(None).values()
                         if a["ActorClassName"] == "ClientAppActor")
        deadline = time.monotonic() + wait_s
        while True:
            names: dict[tuple[bytes, int], str] = {}
            where: dict[tuple[bytes, int], str] = {}
            for raw in state._connect_and_get_accessor().get_task_events():
                event = gcs_pb2.TaskEvents.FromString(raw)
                key = (event.task_id, event.attempt_number)  # one task's info and state arrive in separate events
                if event.HasField("task_info") and event.task_info.func_or_class_name:
                    names[key] = event.task_info.func_or_class_name
                if event.HasField("state_updates") and event.state_updates.node_id:
                    where[key] = event.state_updates.node_id.hex()
            calls = Counter(where[k] for k, name in names.items() if name == "ClientAppActor.run" and k in where)
            if all(calls[n] for n in nodes.values()) or time.monotonic() > deadline:
                return nodes, actors, calls
            time.sleep(0.5)
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_run_attached_to_a_two_node_cluster_runs_clients_on_both_nodes(two_node_cluster, tmp_path, tiny_config):
    from fedlottery.runs.results import read_csv
    from fedlottery.runtime.simulation import run_federated

    cfg = _config(tiny_config, ray_address=two_node_cluster.address)
    summary = run_federated(cfg, tmp_path, log=lambda _: None)

    rows = read_csv(tmp_path / "rounds.csv")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["clients"] == 2 and r["failed_train_clients"] == 0 and r["failed_eval_clients"] == 0 for r in rows)
    assert summary["strategies"]["lotteryfl"]["failures"] == []
    assert {c["partition_id"] for c in read_csv(tmp_path / "clients.csv")} == {0, 1, 2, 3}

    nodes, actors, calls = _client_calls_per_node(two_node_cluster.address)
    role = {node: name for name, node in nodes.items()}
    print(f"client actors per node: { {role.get(n, n): c for n, c in actors.items()} }, "
          f"ClientAppActor.run calls per node: { {role.get(n, n): c for n, c in calls.items()} }")
    assert set(nodes) == {"head_only", "worker_node"} and nodes["head_only"] != nodes["worker_node"], nodes
    # 1 CPU per node and num_cpus 1 per actor: Flower's pool holds one client actor on each node ...
    assert actors == Counter({nodes["head_only"]: 1, nodes["worker_node"]: 1}), (nodes, actors)
    # ... and each of them really ran ClientApp calls (setup queries, training, evaluation) on its node.
    assert calls[nodes["head_only"]] >= 1 and calls[nodes["worker_node"]] >= 1, (nodes, calls)
    assert set(calls) <= set(nodes.values()), calls


REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 240.0
# The dashboard's own imports beyond plain `ray`: what `pip install -e .[cluster]` (ray[default]) adds.
RAY_DEFAULT_MODULES = ("aiohttp_cors", "opencensus", "prometheus_client")


def _ray_job(dashboard: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`ray job ARGS --address DASHBOARD` as a user types it, from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(RAY_CLI), "job", args[0], "--address", dashboard, *args[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def _wait_for_job(dashboard: str, job_id: str) -> str:
    """Poll `ray job status` until the job ends: its final word (SUCCEEDED, FAILED, STOPPED), or what the command
    last said. Ray's CLI says "Status for job 'ID': RUNNING" while a job runs but "Job 'ID' succeeded" (or failed,
    stopped) once it has ended, coloured on a terminal."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    said = ""
    while time.monotonic() < deadline:
        answer = _ray_job(dashboard, "status", job_id)  # Ray's CLI logger writes to stderr
        said = ANSI_CODE.sub("", answer.stdout + answer.stderr)
        ended = re.search(r"Job '[^']+' (succeeded|failed|stopped)", said)
        if ended:
            return ended.group(1).upper()
        time.sleep(2.0)
    return f"not ended after {JOB_TIMEOUT_S:.0f} s; `ray job status` said: {said[-1500:]}"


@pytest.mark.slow
def test_ray_job_submit_runs_the_experiment_on_both_nodes(tmp_path, tiny_config):
    """The cluster path the docs give: `ray start --head` (dashboard on) + a worker node, then `ray job submit
    --working-dir . -- python -m fedlottery.cli run CONFIG --out DIR` from the repository; the job's driver
    finds the cluster through the $RAY_ADDRESS Ray gives it, its clients run on both nodes, the results land in
    DIR (storage both nodes see: one machine here) and `ray job logs` shows the run's progress and table."""
    missing = [m for m in RAY_DEFAULT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"ray[default] is not installed (missing {', '.join(missing)}): job submission needs Ray's "
                    "dashboard; `pip install -e .[cluster]`")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tiny_config(strategies=["lotteryfl"])))
    out = tmp_path / "out"
    port = _free_port()
    with started_two_node_cluster(dashboard_port=port) as cluster:
        dashboard = f"http://127.0.0.1:{port}"
        submitted = _ray_job(dashboard, "submit", "--no-wait", "--working-dir", ".", "--",
                             sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out),
                             timeout=120.0)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
        status = _wait_for_job(dashboard, job_id)
        answer = _ray_job(dashboard, "logs", job_id)
        logs = answer.stdout + answer.stderr
        assert status == "SUCCEEDED", f"job {job_id}: {status}\n{logs[-3000:]}"
        nodes, actors, calls = _client_calls_per_node(cluster.address)

    from fedlottery.runs.results import read_csv

    assert "lotteryfl round 2/2" in logs and "| lotteryfl |" in logs, logs[-3000:]
    rows = read_csv(out / "rounds.csv")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["failed_train_clients"] == 0 and r["failed_eval_clients"] == 0 for r in rows)
    assert set(actors) == set(nodes.values()) and len(nodes) == 2, (nodes, actors)
    assert all(calls[node] >= 1 for node in nodes.values()), (nodes, calls)


def test_teardown_ends_only_its_own_sessions():
    """_end_sessions touches processes of the given sessions alone: a sleeper in another session survives it."""
    mine = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert _end_sessions({mine.pid}, grace=2.0) == [mine.pid]
        assert mine.wait(timeout=5) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
        with contextlib.suppress(ProcessLookupError):
            mine.kill()


# ---- a client given a GPU puts its model, theta_0 and data on it -------------------------------------------------
@pytest.fixture
def cuda(monkeypatch):
    """torch.cuda as a client actor given `count` GPUs would see it (nothing is ever allocated on it)."""

    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


@pytest.mark.parametrize("device, num_gpus, visible, expected", [
    ("auto", 0.0, 1, "cpu"),      # no GPU asked of Ray: cpu even where one is visible
    ("cpu", 0.5, 1, "cpu"),
    ("auto", 0.5, 1, "cuda"),     # a fractional GPU: the one Ray assigned, cuda (= cuda:0 in the actor)
    ("auto", 0.125, 1, "cuda"),
    ("cuda", 1.0, 1, "cuda"),
    ("cuda:0", 1.0, 1, "cuda:0"),  # was the CPU before: only the bare "cuda" counted
    ("cuda:1", 2.0, 2, "cuda:1"),
])
def test_device_for_picks_the_gpu_ray_gave_the_actor(cuda, device, num_gpus, visible, expected, tiny_config):
    cuda(visible)
    assert client_app.device_for(_config(tiny_config, device=device, num_gpus=num_gpus)) == torch.device(expected)


@pytest.mark.parametrize("device, num_gpus, visible", [
    ("auto", 0.5, 0),    # Ray gave a GPU, torch here cannot see it (a CPU build on that node, a broken driver)
    ("cuda", 1.0, 0),
    ("cuda:1", 1.0, 1),  # the actor sees its one GPU as cuda:0
])
def test_device_for_refuses_a_gpu_it_cannot_see_instead_of_training_on_the_cpu(cuda, device, num_gpus, visible,
                                                                                  tiny_config):
    cuda(visible)
    with pytest.raises(RuntimeError, match=rf"sees {visible} CUDA GPU\(s\).*numbers an actor's GPUs from cuda:0"):
        client_app.device_for(_config(tiny_config, device=device, num_gpus=num_gpus))


def test_a_gpu_index_no_client_actor_can_see_is_refused_up_front(monkeypatch, tiny_config):
    monkeypatch.setattr("fedlottery.runtime.ray_runtime.cuda_gpus", lambda: 2)
    monkeypatch.setattr("fedlottery.runtime.ray_runtime.machine_cpus", lambda: 4)
    monkeypatch.delenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", raising=False)
    check_resources(_config(tiny_config, device="cuda:1", num_gpus=2))  # two GPUs per actor: cuda:0 and cuda:1
    for cfg in (_config(tiny_config, device="cuda:1", num_gpus=1), _config(tiny_config, device="cuda:1", num_gpus=0.5),
                _config(tiny_config, device="cuda:1", num_gpus=1,
                        ray_address="10.0.0.1:6379")):  # a cluster: the same rule
        with pytest.raises(ConfigError, match=r"simulation.device: 'cuda:1', but Ray shows each client actor only "
                                              r"the 1 GPU\(s\) it assigns it .*use device: cuda"):
            check_resources(cfg)
    monkeypatch.setenv("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "1")  # Ray leaves every GPU visible
    check_resources(_config(tiny_config, device="cuda:1", num_gpus=1))


def test_client_data_moves_every_split_to_the_device(tiny_config):
    config_json = json.dumps(to_dict(_config(tiny_config)))
    data = client_app.client_data(config_json, 2, torch.device("meta"))
    for x, y in (data.train, data.val, data.test):
        assert x.device.type == "meta" and y.device.type == "meta" and len(y) > 0


def test_a_client_given_a_device_trains_and_evaluates_everything_on_it(monkeypatch, tmp_path, flower_run, tiny_config):
    """The real ClientApp handler with device_for -> "meta" (a stand-in for cuda on a machine without one): the
    model, theta_0 and all data the strategy's client procedure and the evaluation receive are on that device."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from fedlottery.data import load_dataset, make_partitions
    from fedlottery.models import batchnorm_names, build_model, clone_state, prunable_names
    from strategies import get_strategy, options_for
    from strategies.base import ServerSetup

    cfg = _config(tiny_config)
    config_json = json.dumps(to_dict(cfg))
    dataset = load_dataset(cfg.data)
    splits = make_partitions(dataset, cfg.partition, cfg.seed)
    torch.manual_seed(cfg.seed)
    template = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    setup = ServerSetup(theta0=clone_state(template), prunable=prunable_names(template),
                        node_of={p: 100 + p for p in range(len(splits))}, clients_per_round=cfg.clients_per_round,
                        seed=cfg.seed, local=cfg.local, batchnorm=batchnorm_names(template), comm=cfg.comm,
                        train_sizes={p: len(s.train) for p, s in enumerate(splits)},
                        test_sizes={p: len(s.test) for p, s in enumerate(splits)})
    server = get_strategy("lotteryfl")(setup, options_for(cfg, "lotteryfl"))

    seen = {}

    class Reached(Exception):
        pass

    class Recording:  # the strategy's client half, recording what it is handed
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def client_train(self, task):
            seen["train"] = task
            raise Reached

    real_get = client_app.get_strategy
    monkeypatch.setattr(client_app, "get_strategy", lambda name: Recording(real_get(name)))
    monkeypatch.setattr(client_app, "device_for", lambda _cfg: torch.device("meta"))

    def recording_evaluate(models, data, *args, **kwargs):
        seen["evaluate"] = (models[0], data)  # the personal model (and the deployed one, when configured)
        raise Reached

    monkeypatch.setattr(client_app, "evaluate_many", recording_evaluate)

    def context_for(pid):
        context = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid,
                                                                    "state-dir": str(tmp_path / "client_state")},
                          state=RecordDict(), run_config={})  # the node's own client-state directory
        context.state[client_app.STATE_KEY] = ConfigRecord({"experiment": config_json})
        return context

    def first(messages):
        import uuid

        message = list(messages)[0]
        message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what Flower sets when it pushes
        return message, context_for(int(message.content["config"]["partition-id"]))

    with pytest.raises(Reached):
        client_app._handle(*first(server.configure_train(1, None, None, None)), training=True)
    task = seen["train"]
    assert {p.device.type for p in task.model.parameters()} == {"meta"}
    assert {b.device.type for b in task.model.buffers()} <= {"meta"}
    assert {t.device.type for t in task.theta0.values()} == {"meta"}
    assert {t.device.type for split in (task.data.train, task.data.val, task.data.test) for t in split} == {"meta"}

    with pytest.raises(Reached):
        client_app._handle(*first(server.configure_evaluate(1, None, None, None)), training=False)
    model, data = seen["evaluate"]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {t.device.type for t in data} == {"meta"}
