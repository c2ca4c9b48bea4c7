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
from fedlottery.models import batchnorm_names, build_model, clone_state, prunable_names
from fedlottery.sparsity import Mask
from fedlottery.training import evaluate
from strategies import get_strategy
from strategies.base import ClientData, ClientTask, mask_crc

app = ClientApp()
STATE_KEY = "fedlottery"
DOWNLINK_KEYS = ("strategy", "round", "partition-id", "broadcast", "mask-crc")  # the rest: strategy instructions


@functools.lru_cache(maxsize=4)
def experiment(config_json: str) -> FederatedConfig:
    return from_dict(FederatedConfig, json.loads(config_json))


@functools.lru_cache(maxsize=4)
def _partitions(config_json: str):
    cfg = experiment(config_json)
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    return dataset, make_partitions(dataset, cfg.partition, cfg.seed)


@functools.lru_cache(maxsize=4)
def initial_state(config_json: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """theta_0, the prunable names and the BatchNorm names: the same seeded draw the server makes, so
    theta_0 is never sent."""
    cfg = experiment(config_json)
    dataset, _ = _partitions(config_json)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    return clone_state(model), prunable_names(model), batchnorm_names(model)


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


def _held_tensors(context: Context, key: str) -> dict[str, torch.Tensor] | None:
    record = context.state.get(key)
    return None if record is None else {k: torch.from_numpy(a.numpy()) for k, a in record.items()}


def _hold_tensors(context: Context, key: str, tensors: dict[str, torch.Tensor]) -> None:
    context.state[key] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in tensors.items()})


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
    theta0, prunable, batchnorm = initial_state(config_json)
    options = cfg.options_for(name)
    personal = strategy.personal_names(options, batchnorm)
    held = _held_mask(context, name)
    if held is None:  # a client that was never sent a mask holds the dense one
        held = Mask.ones({n: theta0[n].shape for n in prunable})
    state, sent = unpack_state(message.content["model"], theta0, held, set(prunable))
    # broadcast: the same dense model for everyone, and this client applies its own mask
    mask = held if bool(conf["broadcast"]) or sent is None else sent
    if mask_crc(mask) != int(conf["mask-crc"]):
        raise CodecError("client mask out of sync with the server's")
    if mask != held:
        _hold_mask(context, name, mask)
    mask.apply_(state)
    personal_state = {k: theta0[k] for k in personal}
    personal_state.update(_held_tensors(context, f"personal.{name}") or {})
    device = device_for(cfg)
    dataset, _ = _partitions(config_json)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    model.load_state_dict({**theta0, **state, **personal_state})
    model.to(device)
    data = client_data(config_json, pid, device)
    if not training:
        loss, acc = evaluate(model, data.test)
        metrics = {"partition-id": pid, "num-examples": len(data.test[1]), "test-acc": acc, "test-loss": loss}
        if cfg.evaluation.deployed:
            # The model this client would really hold: its own last trained weights (else what it got).
            kept = _held_tensors(context, f"trained.{name}")
            if kept is not None:
                model.load_state_dict(kept)
                model.to(device)
            metrics["deployed-acc"] = evaluate(model, data.test)[1]
        return Message(RecordDict({"model": ArrayRecord(), "metrics": MetricRecord(metrics)}), reply_to=message)

    generator = torch.Generator().manual_seed(zlib.crc32(f"{cfg.seed}/{conf['round']}/{pid}/{name}".encode()))
    memory_key = f"memory.{name}"
    memory = {k: float(v) for k, v in context.state.get(memory_key, ConfigRecord()).items()}
    instructions = {k: v for k, v in conf.items() if k not in DOWNLINK_KEYS}
    task = ClientTask(model, mask, {k: v.to(device) for k, v in theta0.items()}, data, cfg.local, options,
                      generator, int(conf["round"]), memory, instructions)
    update = strategy.client_train(task)
    context.state[memory_key] = ConfigRecord(task.memory)
    if update.send_state and personal:
        _hold_tensors(context, f"personal.{name}", {k: update.state[k] for k in personal})
    if update.send_state and cfg.evaluation.deployed:
        _hold_tensors(context, f"trained.{name}", update.state)
    if update.mask != mask:
        _hold_mask(context, name, update.mask)
    arrays = ArrayRecord()
    if update.send_state:
        arrays = pack_state(update.state, update.mask, mask, personal, cfg.comm.codec, cfg.comm.values)
    metrics = {"partition-id": pid, "num-examples": update.num_examples,
               "mask-changed": float(update.mask != mask), **update.metrics}
    return Message(RecordDict({"model": arrays, "metrics": MetricRecord(metrics)}), reply_to=message)
