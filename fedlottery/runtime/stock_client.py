"""Stock Flower messages to a fedlottery client: plain local training and evaluation on its partition.

A ServerApp running any of Flower's own strategies (FedAvg, FedProx, FedAdam, ... with their own
`start(...)`) sends `RecordDict({"arrays": ArrayRecord, "config": ConfigRecord})` and expects `"arrays"` and
`"metrics"` (with `"num-examples"`) back; fedlottery's own messages carry "model" and a config naming the
strategy (client_cache.py tells them apart with `is_standard` and sends stock ones here).

- The experiment comes from the run config: `config` (a YAML path, resolved like the ServerApp's: from the
  working directory, else from the app's root; `flwr run .` passes pyproject's), else $FEDLOTTERY_CONFIG (for
  `flwr.simulation.run_simulation`, whose clients get an empty run config), else configs/default.yaml; it is
  loaded and checked with `fedlottery.runtime.experiment.load_experiment`. The client's partition is
  `node_config["partition-id"]`.
- Training: the received "arrays" (a standard ArrayRecord of the model's state dict) are loaded into the
  config's model and trained E local epochs (`local`: optimizer, lr, epochs, batch size) on the client's
  training split, honouring what stock strategies send in "config": "lr" when present, FedProx's
  "proximal-mu" ((mu/2)·||w − w_global||² added to the local loss). Reply: "arrays" (the trained state dict)
  and "metrics" with "num-examples" (training images) and "train_loss" (the received model's mean loss on
  the training split, what q-FedAvg weighs clients by). Batches are drawn from a generator seeded by
  (seed, "server-round", partition) exactly as fedlottery's own clients seed theirs (fedlottery.schedule), so a
  stock FedAvg round trains each client as fedlottery's `fedavg` would.
- Evaluation: "metrics" with "num-examples", "eval_loss" and "eval_acc" of the received model on the
  client's whole local test set.
"""
from __future__ import annotations

import functools
import json
import os

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedlottery.config import to_dict
from fedlottery.models import build_model
from fedlottery.runtime import client_cache
from fedlottery.runtime.experiment import load_experiment, resolve_config_path
from fedlottery.schedule import client_seed
from fedlottery.training import evaluate as evaluate_model
from fedlottery.training import proximal_term
from fedlottery.training import train as train_model

DEFAULT_CONFIG = "configs/default.yaml"
CONFIG_ENV = "FEDLOTTERY_CONFIG"


def is_standard(message: Message) -> bool:
    """A message from a stock Flower strategy (not one of fedlottery's, whose config names the strategy)."""
    config = message.content.get("config")
    return "model" not in message.content and not (config is not None and "strategy" in config)


@functools.lru_cache(maxsize=8)
def _experiment_json(path: str) -> str:
    return json.dumps(to_dict(load_experiment(path)))


def config_path(context: Context) -> str:
    """The run config's `config`; else $FEDLOTTERY_CONFIG (`flwr.simulation.run_simulation` gives clients an
    empty run config: set it in the driver before Ray starts, and Ray's workers inherit it); else the default."""
    return str(context.run_config.get("config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def experiment_json(context: Context) -> str:
    """The run's experiment (`config_path`, resolved like the ServerApp's), as the JSON fedlottery's clients
    cache by."""
    return _experiment_json(resolve_config_path(config_path(context)))


def _records(message: Message) -> tuple[ArrayRecord, ConfigRecord]:
    """The message's ArrayRecord ("arrays", or its only one: the key is a strategy argument) and ConfigRecord."""
    content = message.content
    arrays = content.get("arrays")
    if not isinstance(arrays, ArrayRecord):
        found = list(content.array_records.values())
        if len(found) != 1:
            raise ValueError(f"a stock Flower message must carry one ArrayRecord (the model), found {len(found)}")
        arrays = found[0]
    config = content.get("config")
    if not isinstance(config, ConfigRecord):
        configs = list(content.config_records.values())
        config = configs[0] if len(configs) == 1 else ConfigRecord()
    return arrays, config


def _array_key(message: Message) -> str:
    content = message.content
    return "arrays" if isinstance(content.get("arrays"), ArrayRecord) else next(iter(content.array_records))


def _client(message: Message, context: Context):
    """(config, partition id, model holding the received arrays, the client's data, the message's config)."""
    config_json = experiment_json(context)
    cfg = client_cache.experiment(config_json)
    pid = int(context.node_config["partition-id"])
    dataset, _ = client_cache.partitions(config_json)
    arrays, config = _records(message)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    try:
        model.load_state_dict(arrays.to_torch_state_dict())
    except RuntimeError as err:
        raise ValueError(f"the server's arrays do not fit this experiment's model {cfg.model.name!r} "
                         f"(config {config_path(context)}): {err}") from None
    device = client_cache.device_for(cfg)
    model.to(device)
    return cfg, pid, model, client_cache.client_data(config_json, pid, device), config


def train(message: Message, context: Context) -> Message:
    """Plain local training of the received model; FedProx's proximal term when the config asks for it."""
    cfg, pid, model, data, config = _client(message, context)
    server_round = int(config.get("server-round", 0))
    generator = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, pid, "train"))
    lr = float(config["lr"]) if "lr" in config else None
    mu = float(config.get("proximal-mu", 0.0) or 0.0)
    train_loss = evaluate_model(model, data.train)[0]
    proximal = proximal_term(model, mu=mu) if mu else None  # (mu/2)·||w − w_received||²
    train_model(model, data.train, cfg.local.as_training(), generator, epochs=cfg.local.epochs, lr=lr,
                extra_loss=proximal)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metrics = MetricRecord({"num-examples": len(data.train[1]), "train_loss": float(train_loss)})
    return Message(RecordDict({_array_key(message): ArrayRecord(state), "metrics": metrics}), reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """The received model on the client's whole local test set."""
    _, _, model, data, _ = _client(message, context)
    loss, acc = evaluate_model(model, data.test)
    metrics = MetricRecord({"num-examples": len(data.test[1]), "eval_loss": float(loss), "eval_acc": float(acc)})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)
