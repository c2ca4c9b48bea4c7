"""The Flower ClientApp: decodes what the server sent, runs the named strategy's client half, encodes the reply.

A client learns the experiment once (a setup query) and keeps only that in its Context. Its own state between
rounds (held mask, memory, personal tensors, last trained weights, a strategy's kept tensors,
an STC uplink's residual) lives in a versioned client-state store
(fedlottery.runs.client_state) where the node's own configuration says, never where a message says: the
message names the version
to start from, and training saves a new one. Data, partitions and theta_0 are rebuilt from the config and
cached per process (Ray actors live long).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlottery.runtime import stock_client
from fedlottery.runtime.client_cache import (
    client_data, device_for, experiment, initial_state, model_head, partitions, shared_test_set, strategy_spec,
)
from fedlottery.runs.client_state import (
    ClientState, ClientStateError, ClientStateStore, ContextStore, DirectoryStore, check_requested_state_dir,
    node_state_dir,
)
from fedlottery.comm import CodecError, complete_mask, pack_state, unpack_state, uplink
from fedlottery.config import FederatedConfig
from fedlottery.runtime.faults import EVAL_FAULTS, TRAIN_FAULTS, InjectedFault, faults_of, mark_late, slow_down
from fedlottery.models import build_model
from fedlottery.schedule import client_seed
from fedlottery.runtime.shared_evaluation import evaluate_shared
from fedlottery.sparsity import Mask
from fedlottery.training import evaluate, evaluate_many, train, warm_up
from strategies import get_strategy
from strategies.base import RELAY_PREFIX, ClientData, ClientTask, ClientUpdate, FederatedStrategy, mask_crc

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


@dataclass
class _Received:
    """One fedlottery message as this client reads it: the experiment, the round, the strategy and its options."""

    cfg: FederatedConfig
    config_json: str
    conf: ConfigRecord  # the downlink config (DOWNLINK_KEYS, then the strategy's instructions)
    pid: int
    server_round: int
    label: str  # the strategy's name, or its variant's label: what client state is filed under
    comm: Any  # the variant's CommConfig (its uplink compression)
    strategy: type[FederatedStrategy]
    options: Any
    faults: list[str]  # the faults injected into this client this round (fedlottery.runtime.faults)
    theta0: dict[str, torch.Tensor]
    prunable: list[str]
    personal: frozenset[str]  # tensors that never leave this client
    store: ClientStateStore


@dataclass
class _Restored:
    """The client as it starts this round: its stored state, the mask it trains or is scored under, its model
    (holding what the server sent, with its personal tensors put back) and its data."""

    held: ClientState
    mask: Mask
    model: torch.nn.Module
    data: ClientData
    sent_state: dict[str, torch.Tensor]  # what the server sent, decoded (a compressed uplink's reference)
    own_model: bool = False  # evaluated on a model of the client's own (Ditto's), not on what it was sent


def _handle(message: Message, context: Context, training: bool) -> Message:
    """A fedlottery message: read it, restore this client's model, then train or evaluate."""
    received = _receive(message, context, training)
    restored = _restore(message, received, training)
    if training:
        return _train(message, received, restored)
    return _evaluate_restored(message, received, restored)


def _receive(message: Message, context: Context, training: bool) -> _Received:
    """Check that the message reaches the client it names (one that was set up), and draw this round's faults:
    a crash fault fails here, as a broken client would, before any work."""
    if STATE_KEY not in context.state:
        raise RuntimeError("client was not set up: the server must send the setup query first")
    config_json = str(context.state[STATE_KEY]["experiment"])
    cfg = experiment(config_json)
    pid = int(context.node_config["partition-id"])
    conf = message.content["config"]
    if int(conf["partition-id"]) != pid:
        raise RuntimeError(f"message meant for partition {conf['partition-id']} reached partition {pid}")
    label, server_round = str(conf["strategy"]), int(conf["round"])  # a variant's label, or the strategy's name
    spec = strategy_spec(config_json, label)
    name = spec.name
    faults = faults_of(cfg.faults, cfg.seed, server_round, pid, TRAIN_FAULTS if training else EVAL_FAULTS)
    if "train_crash" in faults or "eval_crash" in faults:
        raise InjectedFault(f"injected fault: {faults[0]}")
    strategy = get_strategy(name)
    theta0, prunable, batchnorm = initial_state(config_json)
    options = spec.options
    head = model_head(config_json) if strategy.keeps_head else []
    personal = strategy.personal_set(options, list(theta0), prunable, batchnorm, head)
    return _Received(cfg, config_json, conf, pid, server_round, label, spec.comm, strategy, options, faults, theta0,
                     prunable, personal, state_store(context))


def _restore(message: Message, received: _Received, training: bool) -> _Restored:
    """Decode the downlink against the mask this client holds, refuse a mask the server did not mean (checksum),
    and load the model: what was sent, masked, plus the personal tensors (and personal entries) it kept."""
    r = received
    held_state = r.store.load(r.label, r.pid, int(r.conf["state-version"]))
    held = held_state.mask or r.strategy.initial_mask(r.options, r.cfg.seed, r.pid, r.theta0, list(r.prunable)) \
        or Mask.ones({n: r.theta0[n].shape for n in r.prunable})
    state, sent = unpack_state(message.content["model"], r.theta0, held, set(r.prunable))
    sent = complete_mask(sent, held)  # a personal prunable tensor (FedPer's head) keeps the mask it holds
    # broadcast: the same dense model for everyone, and this client applies its own mask
    mask = held if bool(r.conf["broadcast"]) or sent is None else sent
    if mask_crc(mask) != int(r.conf["mask-crc"]):
        raise CodecError("client mask out of sync with the server's")
    Mask({n: keep for n, keep in mask.items() if n in state}).apply_(state)  # personal tensors stay as kept
    if r.strategy.personal_entries:
        _fill_personal_entries(state, mask, held_state.trained)
    personal_state = {k: r.theta0[k] for k in r.personal}
    personal_state.update(held_state.personal)
    device = device_for(r.cfg)
    dataset, _ = partitions(r.config_json)
    model = build_model(r.cfg.model.name, dataset.input_shape, dataset.num_classes, r.cfg.model.init)
    received_state = {**r.theta0, **state, **personal_state}
    evaluated = received_state if training else r.strategy.evaluation_state(r.options, received_state,
                                                                             held_state.kept)
    model.load_state_dict(evaluated)
    model.to(device)
    return _Restored(held_state, mask, model, client_data(r.config_json, r.pid, device), state,
                     own_model=evaluated is not received_state)


def _train(message: Message, received: _Received, restored: _Restored) -> Message:
    """Run the strategy's client half on this round's task, save the client's new state, encode the reply."""
    task = _task(message, received, restored)
    update = received.strategy.client_train(task)
    new_state = _new_state(received, restored.held, task, update)
    reply = _encode_reply(message, received, restored, update, new_state)
    _save_state(received, new_state)  # after packing: it holds what the uplink withheld
    return reply


def _task(message: Message, received: _Received, restored: _Restored) -> ClientTask:
    """The round's task. Its generator is seeded by (seed, round, partition) alone, never by the strategy's name:
    the same client draws the same batches under every strategy (fedlottery.schedule)."""
    r = received
    generator = torch.Generator().manual_seed(client_seed(r.cfg.seed, r.server_round, r.pid, "train"))
    instructions = {k: v for k, v in r.conf.items() if k not in DOWNLINK_KEYS}
    device = device_for(r.cfg)
    return ClientTask(restored.model, restored.mask, {k: v.to(device) for k, v in r.theta0.items()}, restored.data,
                      r.cfg.local, r.options, generator, r.server_round, dict(restored.held.memory), instructions,
                      _relayed(message.content, r.theta0, r.prunable), dict(restored.held.trained),
                      {k: v.to(device) for k, v in restored.held.kept.items()})


def _new_state(received: _Received, held: ClientState, task: ClientTask, update: ClientUpdate) -> ClientState:
    """This round's client state: mask, memory, personal tensors, last trained weights when kept, the strategy's
    own kept tensors, and (filled in when the reply is packed) the uplink's residual."""
    r = received
    new_state = ClientState(None if update.mask.density() == 1.0 else update.mask, task.memory,
                            dict(held.personal), dict(held.trained),
                            dict(held.kept if update.keep is None else update.keep), dict(held.residual))
    if update.send_state and r.personal:
        new_state.personal = {k: update.state[k] for k in r.personal}
    if update.send_state and (r.cfg.evaluation.deployed or r.strategy.personal_entries or r.strategy.keeps_trained):
        new_state.trained = dict(update.state)
    return new_state


def _save_state(received: _Received, new_state: ClientState) -> None:
    """Store this round's client state as a new version, and drop the versions neither the server nor the last
    checkpoint can still name."""
    r = received
    r.store.save(r.label, r.pid, r.server_round, new_state)
    r.store.keep_only(r.label, r.pid, {int(r.conf["state-keep"]), int(r.conf["state-version"]), r.server_round})


def _encode_reply(message: Message, received: _Received, restored: _Restored, update: ClientUpdate,
                  new_state: ClientState) -> Message:
    """The uplink: what the client half chose to send (encoded against the mask it was sent, compressed when
    comm.uplink says so, the withheld residual put in `new_state`) and its metrics, with this round's injected
    faults applied."""
    r, faults, sent = received, received.faults, restored.mask
    num_examples = update.num_examples * (1000 if "lie_examples" in faults else 1)
    if "nan" in faults and update.send_state:
        _inject_nan(update.state, update.mask)
    arrays = ArrayRecord()
    if update.send_state:
        upload = update.state if update.upload is None else update.upload
        arrays, new_state.residual = _pack_upload(upload, update.mask, sent, r.personal, r.comm, restored.sent_state,
                                                  restored.held.residual,
                                                  client_seed(r.cfg.seed, r.server_round, r.pid, "uplink"))
    if "corrupt" in faults and arrays:
        _corrupt(arrays)
    metrics = {"partition-id": r.pid, "num-examples": num_examples,
               "mask-changed": float(update.mask != sent), **update.metrics}
    reply = Message(RecordDict({"model": arrays, "metrics": MetricRecord(metrics)}), reply_to=message)
    if "late" in faults:
        mark_late(reply)  # past the round's deadline in simulated time: the server treats it as never arrived
    slow_down(r.pid)  # a test hook (unset normally): a slow actor must not change the results
    return reply


def _relayed(content: RecordDict, theta0: dict[str, torch.Tensor], prunable: list[str]
             ) -> dict[int, tuple[dict[str, torch.Tensor], Mask]]:
    """Other clients' sparse models the server relayed (DisPFL's neighbours), each self-contained: its values
    and its mask, decoded against no reference (this client never held that mask)."""
    out = {}
    for key, record in content.array_records.items():
        if key.startswith(RELAY_PREFIX):
            state, keep = unpack_state(record, theta0, None, set(prunable))
            if keep is None:
                raise CodecError(f"relayed record {key!r} carries no prunable tensor")
            out[int(key.removeprefix(RELAY_PREFIX))] = (state, keep)
    return out


def _evaluate_restored(message: Message, received: _Received, restored: _Restored) -> Message:
    """Score the restored model. A dense model without personal tensors may be the one every client has, so it
    is scored once per process; the fine-tuning copy's seed, like training's, names no strategy."""
    r, mask = received, restored.mask
    tune_seed = client_seed(r.cfg.seed, r.server_round, r.pid, "finetune") if finetunes_at(r.cfg, r.server_round) \
        else None
    shared = None
    dense_and_shared = not r.personal and mask.density() == 1.0 and not restored.own_model
    test_set = shared_test_set(r.config_json, device_for(r.cfg)) if dense_and_shared else None
    if test_set is not None:
        shared = (r.config_json, test_set, partitions(r.config_json)[1][r.pid].test)
    tune_mask = None if r.strategy.personal_entries else mask  # personal entries are weights, not zeros
    return _evaluate(message, restored.model, tune_mask, restored.data, restored.held, r.cfg, r.pid, tune_seed, shared)

def _pack_upload(upload, keep: Mask, mask: Mask, personal: frozenset[str], comm, state: dict[str, torch.Tensor],
                 residual: dict[str, torch.Tensor], seed: int) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """The reply's model record: `pack_state`, or with comm.uplink each tensor's update against what this client
    was sent (`state` under `mask`, exactly the server's theta_g under it) compressed; returns the record and the
    residual the client state keeps (STC's error feedback; the old one when nothing was withheld anew)."""
    if uplink.method_of(comm.uplink) is None:
        return pack_state(upload, keep, mask, personal, comm.codec, comm.values), dict(residual)
    sent = {n: (t * mask[n].to(t.dtype) if n in mask else t) for n, t in state.items()}
    generator = torch.Generator().manual_seed(seed)  # the stochastic rounding's draws: (seed, round, partition)
    return uplink.pack_upload(upload, keep, mask, personal, comm, sent, residual, generator)


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
              pid: int, tune_seed: int | None, shared: tuple | None = None) -> Message:
    """The personalised model on the whole local test set; a fine-tuned copy of it (seeded with tune_seed; None:
    none this round), and optionally the deployed one (the client's own last trained weights, or what it got when
    it has never trained).
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
    if tune_seed is not None:
        metrics["finetuned-acc"] = finetuned_accuracy(model, mask, data, cfg, torch.Generator().manual_seed(tune_seed))
    return Message(RecordDict({"model": ArrayRecord(), "metrics": MetricRecord(metrics)}), reply_to=message)


def finetunes_at(cfg: FederatedConfig, server_round: int) -> bool:
    """Whether this evaluation has a fine-tuned column: evaluation.finetune_epochs > 0 and, with
    evaluation.finetune_rounds = "last", only at the last round's evaluation."""
    if not cfg.evaluation.finetune_epochs:
        return False
    return cfg.evaluation.finetune_rounds == "all" or server_round == cfg.rounds


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
