"""The Flower ClientApp: decodes what the server sent, runs the named strategy's client half, encodes the reply.

A client learns the experiment once (a setup query) and keeps only that in its Context. Its own state between
rounds (held mask, memory, personal tensors, last trained weights) lives in a versioned client-state store
(fedlottery.runs.client_state) where the node's own configuration says, never where a message says: the
message names the version
to start from, and training saves a new one. Data, partitions and theta_0 are rebuilt from the config and
cached per process (Ray actors live long).
"""
from __future__ import annotations

import copy
import zlib

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlottery.runtime import stock_client
from fedlottery.runtime.client_cache import (
    client_data, device_for, experiment, initial_state, partitions, shared_test_set,
)
from fedlottery.runs.client_state import (
    ClientState, ClientStateError, ClientStateStore, ContextStore, DirectoryStore, check_requested_state_dir,
    node_state_dir,
)
from fedlottery.comm import CodecError, pack_state, unpack_state
from fedlottery.config import FederatedConfig
from fedlottery.runtime.faults import EVAL_FAULTS, TRAIN_FAULTS, InjectedFault, faults_of, mark_late, slow_down
from fedlottery.models import build_model
from fedlottery.runtime.shared_evaluation import evaluate_shared
from fedlottery.sparsity import Mask
from fedlottery.training import evaluate, evaluate_many, train, warm_up
from strategies import get_strategy, options_for
from strategies.base import ClientData, ClientTask, mask_crc

app = ClientApp()
STATE_KEY = "fedlottery"
# the rest of a downlink config: the strategy's instructions
DOWNLINK_KEYS = ("strategy", "round", "partition-id", "broadcast", "mask-crc", "state-version", "state-keep")


@app.query()
def setup(message: Message, context: Context) -> Message:
    """Learn the experiment; answer with the partition this node holds. Client state lives where the node's own
    configuration says (`state_store`); a query naming another location is refused."""
    config = message.content["config"]
    check_requested_state_dir(str(config.get("state-dir", "")), node_state_dir(context.node_config))
    config_json = str(config["experiment"])
    experiment(config_json)  # validate now, so a bad config fails at setup, not mid-round
    initial_state(config_json)  # load data, partitions and theta_0 into this process now, not in round 1
    warm_up()  # and the optimizer's one-off torch._dynamo import
    context.state[STATE_KEY] = ConfigRecord({"experiment": config_json})
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=message)


def state_store(context: Context) -> ClientStateStore:
    """The directory the node's own configuration names (a simulation's run directory), else its Context."""
    root = node_state_dir(context.node_config)
    return DirectoryStore(root) if root else ContextStore(context)


@app.train()
def train_round(message: Message, context: Context) -> Message:
    if stock_client.is_standard(message):  # a stock Flower ServerApp: plain local training
        return stock_client.train(message, context)
    return _handle(message, context, training=True)


@app.evaluate()
def evaluate_round(message: Message, context: Context) -> Message:
    if stock_client.is_standard(message):
        return stock_client.evaluate(message, context)
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
    name, server_round = str(conf["strategy"]), int(conf["round"])
    faults = faults_of(cfg.faults, cfg.seed, name, server_round, pid, TRAIN_FAULTS if training else EVAL_FAULTS)
    if "train_crash" in faults or "eval_crash" in faults:
        raise InjectedFault(f"injected fault: {faults[0]}")
    strategy = get_strategy(name)
    theta0, prunable, batchnorm = initial_state(config_json)
    options = options_for(cfg, name)
    personal = strategy.personal_tensors(options, list(theta0), prunable, batchnorm)
    store = state_store(context)
    version = int(conf["state-version"])
    held_state = store.load(name, pid, version)
    held = held_state.mask or Mask.ones({n: theta0[n].shape for n in prunable})
    state, sent = unpack_state(message.content["model"], theta0, held, set(prunable))
    # broadcast: the same dense model for everyone, and this client applies its own mask
    mask = held if bool(conf["broadcast"]) or sent is None else sent
    if mask_crc(mask) != int(conf["mask-crc"]):
        raise CodecError("client mask out of sync with the server's")
    Mask({n: keep for n, keep in mask.items() if n in state}).apply_(state)  # personal tensors stay as kept
    if strategy.personal_entries:
        _fill_personal_entries(state, mask, held_state.trained)
    personal_state = {k: theta0[k] for k in personal}
    personal_state.update(held_state.personal)
    device = device_for(cfg)
    dataset, _ = partitions(config_json)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    model.load_state_dict({**theta0, **state, **personal_state})
    model.to(device)
    data = client_data(config_json, pid, device)
    if not training:
        tune_seed = zlib.crc32(f"{cfg.seed}/{server_round}/{pid}/{name}/finetune".encode())
        shared = None
        test_set = shared_test_set(config_json, device) if not personal and mask.density() == 1.0 else None
        if test_set is not None:  # a dense model without personal tensors: maybe the one every client has
            shared = (config_json, test_set, partitions(config_json)[1][pid].test)
        tune_mask = None if strategy.personal_entries else mask  # personal entries are weights, not zeros
        return _evaluate(message, model, tune_mask, data, held_state, cfg, pid, tune_seed, shared)

    generator = torch.Generator().manual_seed(zlib.crc32(f"{cfg.seed}/{server_round}/{pid}/{name}".encode()))
    instructions = {k: v for k, v in conf.items() if k not in DOWNLINK_KEYS}
    task = ClientTask(model, mask, {k: v.to(device) for k, v in theta0.items()}, data, cfg.local, options,
                      generator, server_round, dict(held_state.memory), instructions)
    update = strategy.client_train(task)
    new_state = ClientState(None if update.mask.density() == 1.0 else update.mask, task.memory,
                            dict(held_state.personal), dict(held_state.trained))
    if update.send_state and personal:
        new_state.personal = {k: update.state[k] for k in personal}
    if update.send_state and (cfg.evaluation.deployed or strategy.personal_entries):
        new_state.trained = dict(update.state)
    store.save(name, pid, server_round, new_state)
    store.keep_only(name, pid, {int(conf["state-keep"]), version, server_round})
    num_examples = update.num_examples * (1000 if "lie_examples" in faults else 1)
    if "nan" in faults and update.send_state:
        _inject_nan(update.state, update.mask)
    arrays = ArrayRecord()
    if update.send_state:
        upload = update.state if update.upload is None else update.upload
        arrays = pack_state(upload, update.mask, mask, personal, cfg.comm.codec, cfg.comm.values)
    if "corrupt" in faults and arrays:
        _corrupt(arrays)
    metrics = {"partition-id": pid, "num-examples": num_examples,
               "mask-changed": float(update.mask != mask), **update.metrics}
    reply = Message(RecordDict({"model": arrays, "metrics": MetricRecord(metrics)}), reply_to=message)
    if "late" in faults:
        mark_late(reply)  # past the round's deadline in simulated time: the server treats it as never arrived
    slow_down(pid)  # a test hook (unset normally): a slow actor must not change the results
    return reply


def _fill_personal_entries(state: dict[str, torch.Tensor], mask: Mask, trained: dict[str, torch.Tensor]) -> None:
    """A `personal_entries` strategy: the entries outside the client's mask are its own last trained values."""
    if mask.density() == 1.0:
        return  # nothing personal yet
    if not trained:
        raise ClientStateError("this client holds personal entries (its mask is not dense) but no trained weights "
                               "to take them from: its client state is incomplete")
    for name, keep in mask.items():
        if name in state:
            state[name] = torch.where(keep, state[name], trained[name].to(state[name].dtype))


def _evaluate(message: Message, model, mask: Mask | None, data: ClientData, held: ClientState, cfg: FederatedConfig,
              pid: int, tune_seed: int, shared: tuple | None = None) -> Message:
    """The personalised model on the whole local test set; optionally a fine-tuned copy of it, and the deployed
    one (the client's own last trained weights, or what it got when it has never trained).
    shared: (experiment key, whole test set, this client's test indices) when the personalised model may be
    one that many clients share: it is then scored once per process (fedlottery.runtime.shared_evaluation)."""
    models = [model]
    if cfg.evaluation.deployed:
        deployed = model
        if held.trained:  # a second model, so both are tested in one pass over the test data
            deployed = copy.deepcopy(model)
            deployed.load_state_dict(held.trained)
        models.append(deployed)
    if shared is None:
        results = evaluate_many(models, data.test)
    else:
        results = [evaluate_shared(model, *shared)]
        if len(models) > 1:
            results.append(results[0] if models[1] is model else evaluate(models[1], data.test))
    loss, acc = results[0]
    metrics = {"partition-id": pid, "num-examples": len(data.test[1]), "test-acc": acc, "test-loss": loss}
    if cfg.evaluation.deployed:
        metrics["deployed-acc"] = results[1][1]
    if cfg.evaluation.finetune_epochs:
        metrics["finetuned-acc"] = finetuned_accuracy(model, mask, data, cfg, torch.Generator().manual_seed(tune_seed))
    return Message(RecordDict({"model": ArrayRecord(), "metrics": MetricRecord(metrics)}), reply_to=message)


def finetuned_accuracy(model, mask: Mask | None, data: ClientData, cfg: FederatedConfig, generator: torch.Generator
                       ) -> float:
    """Personalised-FL's standard baseline: a copy of the model the client was sent, trained for
    evaluation.finetune_epochs local epochs under its mask (None: every weight), then tested; the client's state
    is untouched."""
    tuned = copy.deepcopy(model)
    train(tuned, data.train, cfg.local.as_training(), generator, mask=mask, epochs=cfg.evaluation.finetune_epochs)
    return evaluate(tuned, data.test)[1]


def _inject_nan(state: dict[str, torch.Tensor], mask: Mask) -> None:
    """faults.nan: one kept weight becomes NaN (the first kept entry of the first prunable tensor)."""
    for name in mask:
        kept = torch.nonzero(mask[name].flatten())
        if len(kept):
            state[name] = state[name].clone()
            state[name].view(-1)[int(kept[0])] = float("nan")
            return


def _corrupt(arrays: ArrayRecord) -> None:
    """faults.corrupt: flip one byte in the middle of the first tensor's encoding."""
    name = next(iter(arrays))
    array = arrays[name]
    data = bytearray(array.data)
    data[len(data) // 2] ^= 0xFF
    arrays[name] = Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=bytes(data))
