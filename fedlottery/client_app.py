"""The Flower ClientApp: decodes what the server sent, runs the named strategy's client half, encodes the reply.

A client learns the experiment once (a setup query) and keeps only small things in its Context: the
experiment config and, per strategy, the mask it holds (so the server never re-sends an unchanged mask).
Data, partitions and theta_0 are rebuilt from the config and cached per process (Ray actors live long).
"""
from __future__ import annotations

import functools
import json
import zlib

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlottery.comm import CodecError, pack_state, unpack_state
from fedlottery.config import FederatedConfig, from_dict
from fedlottery.data import load_dataset, make_partitions
from fedlottery.models import build_model, clone_state, prunable_names
from fedlottery.sparsity import Mask
from fedlottery.training import evaluate
from strategies import get_strategy
from strategies.base import ClientData, ClientTask, mask_crc

app = ClientApp()
STATE_KEY = "fedlottery"


@functools.lru_cache(maxsize=4)
def experiment(config_json: str) -> FederatedConfig:
    return from_dict(FederatedConfig, json.loads(config_json))


@functools.lru_cache(maxsize=4)
def _partitions(config_json: str):
    cfg = experiment(config_json)
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    return dataset, make_partitions(dataset, cfg.partition, cfg.seed)


@functools.lru_cache(maxsize=4)
def initial_state(config_json: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """theta_0 and the prunable names: the same seeded draw the server makes, so theta_0 is never sent."""
    cfg = experiment(config_json)
    dataset, _ = _partitions(config_json)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    return clone_state(model), prunable_names(model)


def device_for(cfg: FederatedConfig) -> torch.device:
    use_gpu = cfg.simulation.device == "cuda" or (cfg.simulation.device == "auto" and cfg.simulation.num_gpus > 0)
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def client_data(config_json: str, partition_id: int, device: torch.device) -> ClientData:
    dataset, splits = _partitions(config_json)
    if not 0 <= partition_id < len(splits):
        raise ValueError(f"partition-id {partition_id} outside the {len(splits)} partitions of this experiment")
    split = splits[partition_id]
    pick = lambda x, y, idx: (x[idx].to(device), y[idx].to(device))  # noqa: E731
    return ClientData(
        partition_id,
        pick(dataset.x_train, dataset.y_train, split.train),
        pick(dataset.x_train, dataset.y_train, split.val),
        pick(dataset.x_test, dataset.y_test, split.test),
    )


def _held_mask(context: Context, strategy: str) -> Mask | None:
    record = context.state.get(f"mask.{strategy}")
    if record is None:
        return None
    return Mask({name: torch.from_numpy(array.numpy()) for name, array in record.items()})


def _hold_mask(context: Context, strategy: str, mask: Mask) -> None:
    context.state[f"mask.{strategy}"] = ArrayRecord({n: Array(t.numpy()) for n, t in mask.items()})


@app.query()
def setup(message: Message, context: Context) -> Message:
    """Learn the experiment; answer with the partition this node holds (its stable identity)."""
    config_json = str(message.content["config"]["experiment"])
    experiment(config_json)  # validate now, so a bad config fails at setup, not mid-round
    context.state[STATE_KEY] = ConfigRecord({"experiment": config_json})
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=message)


@app.train()
def train_round(message: Message, context: Context) -> Message:
    return _handle(message, context, training=True)


@app.evaluate()
def evaluate_round(message: Message, context: Context) -> Message:
    return _handle(message, context, training=False)


def _handle(message: Message, context: Context, training: bool) -> Message:
    if STATE_KEY not in context.state:
        raise RuntimeError("client was not set up: the server must send the setup query first")
    config_json = str(context.state[STATE_KEY]["experiment"])
    cfg = experiment(config_json)
    pid = int(context.node_config["partition-id"])
    conf = message.content["config"]
    if int(conf["partition-id"]) != pid:
        raise RuntimeError(f"message meant for partition {conf['partition-id']} reached partition {pid}")
    name = str(conf["strategy"])
    strategy = get_strategy(name)
    theta0, prunable = initial_state(config_json)
    held = _held_mask(context, name)
    state, sent_mask = unpack_state(message.content["model"], theta0, held)
    if bool(conf["dense"]):
        mask = Mask.ones({n: theta0[n].shape for n in prunable})
    else:
        mask = sent_mask if sent_mask is not None else held
        if mask is None or mask_crc(mask) != int(conf["mask-crc"]):
            raise CodecError("client mask out of sync with the server's")
        if sent_mask is not None:
            _hold_mask(context, name, mask)
    device = device_for(cfg)
    dataset, _ = _partitions(config_json)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    model.load_state_dict({**theta0, **state})
    model.to(device)
    data = client_data(config_json, pid, device)
    if not training:
        loss, acc = evaluate(model, data.test)
        metrics = {"partition-id": pid, "num-examples": len(data.test[1]), "test-acc": acc, "test-loss": loss}
        if cfg.evaluation.deployed:
            # The model this client would really hold: its own last trained weights (else what it got).
            kept = context.state.get(f"trained.{name}")
            if kept is not None:
                model.load_state_dict({k: torch.from_numpy(a.numpy()) for k, a in kept.items()})
                model.to(device)
            metrics["deployed-acc"] = evaluate(model, data.test)[1]
        return Message(RecordDict({"model": ArrayRecord(), "metrics": MetricRecord(metrics)}), reply_to=message)

    generator = torch.Generator().manual_seed(zlib.crc32(f"{cfg.seed}/{conf['round']}/{pid}/{name}".encode()))
    task = ClientTask(model, mask, {k: v.to(device) for k, v in theta0.items()}, data, cfg.local,
                      cfg.options_for(name), generator, int(conf["round"]))
    update = strategy.client_train(task)
    if cfg.evaluation.deployed:
        context.state[f"trained.{name}"] = ArrayRecord({k: Array(v.cpu().numpy()) for k, v in update.state.items()})
    changed = update.mask != mask
    dense = update.mask.num_kept() == update.mask.numel()
    if changed and not dense:
        _hold_mask(context, name, update.mask)
    arrays = pack_state(update.state, None if dense else update.mask, send_mask=changed)
    metrics = {"partition-id": pid, "num-examples": update.num_examples, "mask-changed": float(changed),
               **update.metrics}
    return Message(RecordDict({"model": arrays, "metrics": MetricRecord(metrics)}), reply_to=message)
