"""Shared by the tests that drive one strategy's whole federation in process: a small config and `Federation`.

`Federation` drives the real server half and the real ClientApp handler (`fedlottery.runtime.client_app._handle`) in
this process, each client with its own Flower Context and the on-disk client-state store, so what is sent,
stored and reloaded between rounds is exactly what a simulation does, without Ray.
"""
import json
import uuid

import torch
from flwr.app import ConfigRecord, Context, RecordDict

import fedlottery.runtime.client_app as client_app
from fedlottery.config import FederatedConfig, from_dict, to_dict
from fedlottery.data import load_dataset, make_partitions
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names
from fedlottery.runs.client_state import DirectoryStore
from strategies import get_strategy, options_for
from strategies.base import ServerSetup


def small_config(strategies=("fedavg",), **overrides) -> FederatedConfig:
    data = {
        "seed": 3,
        "strategies": list(strategies),
        "rounds": 3,
        "clients_per_round": 4,
        "data": {"dataset": "digits"},
        "model": {"name": "cnn_digits_bn"},
        "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 40, "shards_per_client": 2,
                      "val_fraction": 0.25},
        "local": {"lr": 0.05, "epochs": 2},
        "simulation": {"num_cpus": 1},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return from_dict(FederatedConfig, data)


class Federation:
    """One strategy's server half plus the real ClientApp handler for every client, in process."""

    def __init__(self, tmp_path, name: str, cfg: FederatedConfig):
        self.cfg, self.name = cfg, name
        self.state_dir = tmp_path / "client_state"
        config_json = json.dumps(to_dict(cfg))
        dataset = load_dataset(cfg.data)
        splits = make_partitions(dataset, cfg.partition, cfg.seed)
        torch.manual_seed(cfg.seed)  # the same seeded draw as the server app (and every client)
        self.template = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
        self.setup = ServerSetup(
            clone_state(self.template), prunable_names(self.template), {pid: 100 + pid for pid in range(len(splits))},
            cfg.clients_per_round, cfg.seed, cfg.local, batchnorm_names(self.template), cfg.comm,
            train_sizes={pid: len(s.train) for pid, s in enumerate(splits)},
            test_sizes={pid: len(s.test) for pid, s in enumerate(splits)}, head=head_names(self.template))
        self.strategy = get_strategy(name)(self.setup, options_for(cfg, name))
        self.contexts = {}
        for pid in range(len(splits)):
            context = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid,
                                                                        "state-dir": str(self.state_dir)},
                              state=RecordDict(), run_config={})  # the node's own client-state directory
            context.state[client_app.STATE_KEY] = ConfigRecord({"experiment": config_json})
            self.contexts[pid] = context

    def _exchange(self, messages, training: bool):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what Flower sets when it pushes
        for message in messages:
            pid = int(message.content["config"]["partition-id"])
            replies.append(client_app._handle(message, self.contexts[pid], training=training))
        return replies

    def train(self, rnd: int):
        messages = list(self.strategy.configure_train(rnd, None, None, None))
        replies = self._exchange(messages, training=True)
        _, metrics = self.strategy.aggregate_train(rnd, replies)
        assert int(metrics["clients"]) == len(messages), self.strategy.failures
        return messages, replies

    def evaluate(self, rnd: int) -> dict[int, dict[str, float]]:
        messages = list(self.strategy.configure_evaluate(rnd, None, None, None))
        results = self.strategy.evaluation_results(rnd, self._exchange(messages, training=False))
        assert len(results) == len(messages), self.strategy.failures
        return results

    def stored(self, pid: int):
        """What client `pid` holds now: the state version the server will start it from."""
        return DirectoryStore(self.state_dir).load(self.name, pid, self.strategy.state_version[pid])
