"""Shared test set-up: one torch thread (tiny models; avoids oversubscribing 2-core CI machines), toy client
tasks and server setups, the tiny federated experiment the run-level tests start from, and a run's result files
with the wall-clock fields removed (what two runs that must agree are compared on)."""
import copy
import csv
import json
from pathlib import Path

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from fedlottery.config import LocalTrainingConfig  # noqa: E402
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names  # noqa: E402
from fedlottery.sparsity import Mask  # noqa: E402
from strategies.base import ClientData, ClientTask, ServerSetup  # noqa: E402


def toy_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy 8x8 two-class problem (the label is which of two pixels is larger)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, x.flatten(1)[:, :2].argmax(1).long()


@pytest.fixture
def make_task():
    """A client task on toy data: make_task(options, model="mlp_digits", state=None, mask=None, **task)."""

    def make(options, model_name="mlp_digits", state=None, mask=None, seed=0, epochs=2, **extra):
        torch.manual_seed(seed)
        model = build_model(model_name, (1, 8, 8), 10)
        theta0 = clone_state(model)
        if state is not None:
            model.load_state_dict(state)
        params = dict(model.named_parameters())
        mask = mask or Mask.ones_like({n: params[n] for n in prunable_names(model)})
        data = ClientData(0, toy_split(128, 1), toy_split(64, 2), toy_split(64, 3))
        local = LocalTrainingConfig(lr=0.05, epochs=epochs, batch_size=32)
        return ClientTask(model, mask, theta0, data, local, options, torch.Generator().manual_seed(seed),
                          extra.pop("server_round", 1), **extra)

    return make


@pytest.fixture
def make_setup():
    """A server setup over `clients` partitions for a model: make_setup(model_name, clients=4, per_round=2); a
    20-round run unless `rounds` says otherwise (0: unknown, as a hand-built setup may leave it)."""

    def make(model_name="mlp_digits", clients=4, per_round=2, seed=0, rounds=20):
        torch.manual_seed(seed)
        model = build_model(model_name, (1, 8, 8), 10)
        return ServerSetup(clone_state(model), prunable_names(model), {p: 100 + p for p in range(clients)},
                           per_round, seed, LocalTrainingConfig(), batchnorm_names(model),
                           train_sizes={p: 100 for p in range(clients)}, test_sizes={p: 50 for p in range(clients)},
                           head=head_names(model), rounds=rounds)

    return make


@pytest.fixture
def flower_run():
    """Flower messages need a run id outside a running ServerApp; set one for the test, then restore."""
    from flwr.supercore.task_identity import TaskIdentity

    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # node 0: the ServerApp's side
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


# The tiny federated experiment: 4 clients on the embedded digits data, 2 rounds of 2 clients, one CPU. A test
# states only what it changes, so the reader sees what matters to it (and every such test runs in seconds).
TINY_CONFIG = {
    "seed": 1,
    "strategies": ["fedavg"],
    "rounds": 2,
    "clients_per_round": 2,
    "data": {"dataset": "digits"},
    "model": {"name": "mlp_digits"},
    "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 40, "shards_per_client": 2,
                  "val_fraction": 0.25},
    "local": {"lr": 0.05, "epochs": 1},
    "simulation": {"num_cpus": 1},
}


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it: a section given as a dict changes only the keys it names."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.fixture
def tiny_config():
    """The tiny federated experiment as a plain dict: tiny_config(rounds=4, partition={"num_clients": 6}, ...)."""

    def make(**changes) -> dict:
        return merged(TINY_CONFIG, changes)

    return make


@pytest.fixture
def run_files():
    """Every result file of a run directory, with the wall-clock fields removed: run_files(out) -> dict.

    Two runs that must give the same results (resumed or whole, one actor or two, `flwr run` or
    `fedlottery run`) differ only in how long they took; compare these instead of the bytes."""

    def read(out: Path) -> dict:
        with (out / "rounds.csv").open() as f:
            rounds = [{k: v for k, v in row.items() if k not in ("wall_s", "eval_wall_s")}
                      for row in csv.DictReader(f)]
        summary = json.loads((out / "summary.json").read_text())
        for s in summary["strategies"].values():
            s.pop("wall_s")
        return {"rounds.csv": rounds, "clients.csv": (out / "clients.csv").read_text(), "summary.json": summary}

    return read


@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory):
    """$FEDLOTTERY_CACHE in a temporary directory shared by one module's tests (they may reuse each other's
    partition caches, but never read or fill ~/.cache); a module opts in with pytest.mark.usefixtures."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("FEDLOTTERY_CACHE", str(path))
        yield path
