"""The node owns its files: a client keeps its state where its own configuration says (a SuperNode's
`state-dir` node config, or $FEDLOTTERY_STATE_DIR that fedlottery's launcher gives simulation actors), and a
setup query naming another location is refused instead of obeyed."""
from __future__ import annotations

import json
import os

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedlottery.config import FederatedConfig, from_dict, to_dict
from fedlottery.runs.client_state import STATE_DIR_ENV, ClientStateError, ContextStore, DirectoryStore
from fedlottery.runtime import client_app

CFG = from_dict(FederatedConfig, {
    "strategies": ["fedavg"], "clients_per_round": 2, "data": {"dataset": "digits"}, "model": {"name": "mlp_digits"},
    "partition": {"scheme": "shards", "num_clients": 2, "shard_size": 30, "shards_per_client": 2,
                  "val_fraction": 0.2},
})


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, **node_config}, state=RecordDict(),
                   run_config={})


def _setup_query(state_dir: str | None) -> Message:
    config = {"experiment": json.dumps(to_dict(CFG))}
    if state_dir is not None:
        config["state-dir"] = state_dir
    return Message(RecordDict({"config": ConfigRecord(config)}), 7, MessageType.QUERY)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)


def test_a_setup_query_naming_another_directory_is_refused(tmp_path, flower_run):
    own = tmp_path / "run" / "client_state"
    context = _context(**{"state-dir": str(own)})
    with pytest.raises(ClientStateError, match="a message cannot choose a node's files"):
        client_app.setup(_setup_query(str(tmp_path / "elsewhere")), context)
    assert client_app.STATE_KEY not in context.state  # not set up: no round can run on it
    with pytest.raises(ClientStateError, match="has none of its own"):  # a node without a directory of its own
        client_app.setup(_setup_query("/etc"), _context())


def test_the_nodes_own_directory_is_used_whatever_the_query_says(tmp_path, flower_run, monkeypatch):
    own = tmp_path / "run" / "client_state"
    context = _context(**{"state-dir": str(own)})
    client_app.setup(_setup_query(str(own)), context)  # the same place: accepted
    store = client_app.state_store(context)
    assert isinstance(store, DirectoryStore) and store.root == own
    context = _context()  # a simulation actor: the launcher's environment variable is its configuration
    monkeypatch.setenv(STATE_DIR_ENV, str(own))
    client_app.setup(_setup_query(str(own)), context)
    assert client_app.state_store(context).root == own
    monkeypatch.delenv(STATE_DIR_ENV)
    context = _context()  # a real SuperNode without one: its own Context, even if a query names a path
    client_app.setup(_setup_query(""), context)
    context.state[client_app.STATE_KEY]["state-dir"] = str(tmp_path / "elsewhere")  # as an old client stored it
    assert isinstance(client_app.state_store(context), ContextStore)


def test_start_ray_gives_the_actors_the_run_directory(monkeypatch):
    """The launcher's side: the client-state directory travels in the actors' environment, not a message."""
    import ray

    from fedlottery.runtime import ray_runtime

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append((kwargs, os.environ.get(STATE_DIR_ENV))))
    for name in ("RAY_ADDRESS", STATE_DIR_ENV, ray_runtime.PRELOAD_ENV, "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)  # and restored after the test
    ray_runtime.start_ray(CFG, state_dir="/runs/x/client_state")
    kwargs, inherited = calls[0]
    # in the environment the raylet and its workers inherit; no runtime_env, so Ray's prestarted workers serve
    assert inherited == "/runs/x/client_state" and "runtime_env" not in kwargs
