"""Flower's own strategies as dense baselines inside fedlottery's loop: `flwr:<ClassName>`.

Any strategy class of `flwr.serverapp.strategy` that aggregates model weights (FedAvg, FedProx, FedAdam,
FedAdagrad, FedYogi, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg) can be named in a
config as `flwr:<ClassName>`; its options go to the class's constructor:

    strategies: [fedavg, "flwr:FedProx", "flwr:FedAdam"]
    strategy_options:
      "flwr:FedProx": {proximal_mu: 0.01}
      "flwr:FedAdam": {eta: 0.003, tau: 0.001}

Everything around the server rule stays fedlottery's: the same partitions, theta_0 and seeded client sampling
(`FederatedStrategy.sample`, not Flower's node sampling), the byte meter, the reply checks and the honest
per-client evaluation. Per round the Flower strategy object sees what it would see under Flower's own
`start(...)` loop:

- `configure_train(round, theta_g, {}, grid)` with a small stand-in grid whose nodes are the round's sampled
  clients: Flower's server-side state moves as usual (FedAdam's / FedAvgM's / QFedAvg's `current_arrays`),
  and the config it would send each node (FedProx's "proximal-mu", "server-round", ...) travels to that
  client as fedlottery `instructions`. Flower's messages themselves are never sent.
- `aggregate_train(round, replies)` with one Flower reply per accepted (checked) client reply, in
  partition-id order: `RecordDict({"arrays": ArrayRecord, "metrics": MetricRecord})` answering (`reply_to`)
  the message fedlottery sent that client, `num-examples` under the strategy's `weighted_by_key`. The
  ArrayRecord it returns becomes theta_g.

Flower aggregates the model's floating-point tensors (weights, biases, BatchNorm statistics); integer
buffers (BatchNorm's num_batches_tracked) follow fedlottery's FedAvg rule. Global RNG state is saved around
every call into Flower, so Flower's own `random.sample` never disturbs a run's other draws.

The client half trains the received dense model like fedlottery's FedAvg (`local` config: optimizer, lr,
epochs, batch size), with FedProx's proximal term (mu/2)·||w − w_global||² when the instructions carry
"proximal-mu" and the learning rate "lr" when they carry one. Its batch order is drawn from the client's own
stream for (seed, round, partition) ("train-seed", fedlottery.schedule.client_seed), so every dense baseline
of a run sees the same clients in the same batch order and differs from fedlottery's `fedavg` only by its
server rule (and proximal term). It reports "train_loss": the received model's mean loss on the client's
training split (q-FedAvg's F_k(w^t)).
"""
from __future__ import annotations

import inspect
import logging
import math
import random
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower_strategies

from fedlottery.config import ConfigError
from fedlottery.models import clone_state
from fedlottery.training import evaluate, proximal_term, train
from fedlottery.plain_state import from_plain, to_plain
from fedlottery.schedule import client_seed
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply

PREFIX = "flwr:"
# Classes of flwr.serverapp.strategy that cannot run here, and why.
UNSUPPORTED = {
    "Strategy": "is Flower's abstract base class",
    "FedXgbBagging": "aggregates XGBoost models (serialised boosters), not torch weights",
    "FedXgbCyclic": "aggregates XGBoost models (serialised boosters), not torch weights",
    "DifferentialPrivacyClientSideAdaptiveClipping": "wraps another strategy object, which a config cannot give",
    "DifferentialPrivacyClientSideFixedClipping": "wraps another strategy object, which a config cannot give",
    "DifferentialPrivacyServerSideAdaptiveClipping": "wraps another strategy object, which a config cannot give",
    "DifferentialPrivacyServerSideFixedClipping": "wraps another strategy object, which a config cannot give",
}
# Flower's node sampling: fedlottery samples clients_per_round clients itself (seeded), so these would be ignored.
SAMPLING_OPTIONS = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
                    "min_available_nodes")
# Keys of fedlottery's own downlink config (client_app.DOWNLINK_KEYS); a Flower config key never overrides them.
RESERVED_KEYS = frozenset({"strategy", "round", "partition-id", "broadcast", "mask-crc", "state-version",
                           "state-keep", "train-seed"})


def flower_class_names() -> list[str]:
    """Every class of flwr.serverapp.strategy that `flwr:<ClassName>` can name."""
    names = []
    for name in getattr(flower_strategies, "__all__", dir(flower_strategies)):
        obj = getattr(flower_strategies, name, None)
        if isinstance(obj, type) and issubclass(obj, flower_strategies.Strategy) and name not in UNSUPPORTED:
            names.append(name)
    return sorted(names)


def is_flower_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


@contextmanager
def quiet_flower():
    """Flower's INFO lines ("configure_train: Sampled 5 nodes", "Received 5 results") describe its own loop,
    not this one: only its warnings and errors pass while it runs inside fedlottery's. Global RNG state is
    restored afterwards (Flower samples nodes with the `random` module)."""
    logger = logging.getLogger("flwr")
    level, state = logger.level, random.getstate()
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
        random.setstate(state)


@dataclass
class FlowerOptions:
    """The keyword arguments for the Flower class's constructor (checked against its signature)."""

    kwargs: dict[str, Any] = field(default_factory=dict)


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a scalar from a config fits the constructor's annotation (floats take ints; no bool for numbers)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return isinstance(value, (bool, int, float, str))
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return (value is None and type(None) in args) or any(_accepts(a, value) for a in args if a is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if hint is int:
        return not isinstance(value, bool) and isinstance(value, int)
    if hint is str:
        return isinstance(value, str)
    return False


def _scalar_hint(hint: Any) -> bool:
    """A parameter a config can set (numbers, strings, booleans, optionally None)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return all(a in (bool, int, float, str, type(None)) for a in args)


class FlowerStrategy(FederatedStrategy):
    """Base of the per-class strategies `flower_strategy(name)` makes; `flower_class` is set there."""

    flower_class: ClassVar[type] = flower_strategies.FedAvg
    options_cls = FlowerOptions
    # The Flower strategy object is rebuilt from the options; its data attributes (FedOpt's current_arrays,
    # m_t, v_t, ...) are saved beside fedlottery's own state (`state_dict`).
    rebuilt_fields = FederatedStrategy.rebuilt_fields | {"flower", "flower_names", "round_config"}
    metric_bounds = {"train_loss": (0.0, math.inf)}

    # ---- options --------------------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, raw: Any, key: str) -> FlowerOptions:
        """Check `strategy_options."flwr:<Class>"` against the class's constructor and build it once; any
        problem is a ConfigError naming the key (strategies.options calls this instead of from_dict)."""
        where = key
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping of {cls.flower_class.__name__}'s constructor arguments, "
                              f"got {type(raw).__name__}")
        params = {n: p for n, p in inspect.signature(cls.flower_class.__init__).parameters.items()
                  if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        hints = typing.get_type_hints(cls.flower_class.__init__)
        settable = sorted(n for n in params if n not in SAMPLING_OPTIONS and _scalar_hint(hints.get(n, Any)))
        for name, value in raw.items():
            k = f"{where}.{name}"
            if name in SAMPLING_OPTIONS:
                raise ConfigError(f"{k}: fedlottery samples the clients itself (seeded, the same for every "
                                  "strategy of a run); set clients_per_round instead of Flower's node sampling")
            if name not in params:
                raise ConfigError(f"{k}: unknown argument of Flower's {cls.flower_class.__name__}; valid keys here "
                                  f"are {', '.join(settable) or '(none)'}")
            hint = hints.get(name, Any)
            if not _scalar_hint(hint):
                raise ConfigError(f"{k}: takes a {getattr(hint, '__name__', hint)}, which a config cannot give")
            if not _accepts(hint, value):
                raise ConfigError(f"{k}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
        missing = [n for n, p in params.items() if p.default is p.empty and n not in raw]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: required by Flower's {cls.flower_class.__name__}; give it "
                              f"under {where}")
        try:
            with quiet_flower():
                cls.flower_class(**raw)
        except Exception as err:  # noqa: BLE001 -- whatever the constructor refuses, say so by key
            call = ", ".join(f"{k}={v!r}" for k, v in raw.items())
            raise ConfigError(f"{where}: Flower's {cls.flower_class.__name__}({call}) failed: {err}") from None
        return FlowerOptions(dict(raw))

    # ---- client half ----------------------------------------------------------------------------------
    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        """Plain local training of the received dense model; FedProx's proximal term when asked."""
        mu = float(task.instructions.get("proximal-mu", 0.0) or 0.0)
        lr = task.instructions.get("lr")
        seed = task.instructions.get("train-seed")
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else task.generator
        train_loss = evaluate(task.model, task.data.train)[0]  # F_k(w^t): q-FedAvg weighs clients by it
        train(task.model, task.data.train, task.local.as_training(), generator, epochs=task.local.epochs,
              lr=float(lr) if lr is not None else None, extra_loss=proximal_term(task.model, mu=mu) if mu else None)
        return ClientUpdate(clone_state(task.model), task.mask, len(task.data.train[1]),
                            {"train_loss": float(train_loss)})

    # ---- server half ----------------------------------------------------------------------------------
    def __init__(self, setup, options: FlowerOptions | None = None):
        super().__init__(setup, options)
        with quiet_flower():
            self.flower = self.flower_class(**self.options.kwargs)
        # Flower aggregates the floating-point tensors; integer buffers follow fedlottery's FedAvg rule.
        self.flower_names = [n for n, t in self.global_state.items() if t.is_floating_point()]
        self.round_config: dict[int, dict[str, Any]] = {}  # partition id -> this round's Flower config

    def summary(self) -> None:
        """fedlottery's line only: Flower's own summary lists fraction and minimum-node settings that do not
        apply here (fedlottery samples clients_per_round itself, the same clients for every strategy)."""
        super().summary()
        log(logging.INFO, "%s: aggregated by Flower's %s %s", self.label, self.flower_class.__name__, self.options.kwargs)

    def state_dict(self) -> dict[str, Any]:
        flower = {k: to_plain(v, f"{self.name}.flower.{k}") for k, v in vars(self.flower).items() if not callable(v)}
        return {**super().state_dict(), "flower": flower}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key, value in state.get("flower", {}).items():
            setattr(self.flower, key, from_plain(value))

    def flower_arrays(self, state: dict[str, torch.Tensor]) -> ArrayRecord:
        return ArrayRecord({n: Array(state[n].detach().cpu().numpy()) for n in self.flower_names})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._pending = []
        sampled = self.sample(server_round)
        self.round_config = self.flower_configs(server_round, sampled)
        return [self.downlink(pid, MessageType.TRAIN, server_round) for pid in sampled]

    def evaluation_messages(self, server_round: int, partition_ids: Iterable[int]) -> list[Message]:
        self.round_config = {}  # evaluation messages carry no training instructions
        return super().evaluation_messages(server_round, partition_ids)

    def flower_configs(self, server_round: int, sampled: list[int]) -> dict[int, dict[str, Any]]:
        """Run the Flower strategy's configure_train on theta_g with the sampled clients as its nodes; return
        the config each would be sent (scalars and lists; fedlottery's own keys win on a clash)."""
        node_of = {self.setup.node_of[pid]: pid for pid in sampled}
        grid = _RoundGrid(list(node_of), self.flower)
        with quiet_flower():
            messages = list(self.flower.configure_train(server_round, self.flower_arrays(self.global_state),
                                                        ConfigRecord(), grid))
        key = getattr(self.flower, "configrecord_key", "config")
        configs = {m.metadata.dst_node_id: dict(m.content.get(key) or {}) for m in messages}
        common = next(iter(configs.values()), {})
        return {pid: {k: v for k, v in configs.get(node, common).items() if k not in RESERVED_KEYS}
                for node, pid in node_of.items()}

    def instructions(self, partition_id: int, server_round: int) -> dict[str, Any]:
        if partition_id not in self.round_config:
            return {}
        # The client's own training stream (which names no strategy), sent explicitly so the Flower client half
        # and fedlottery's FedAvg draw the same batches whatever generator a task carries.
        stream = client_seed(self.setup.seed, server_round, partition_id, "train")
        return {**self.round_config[partition_id], "train-seed": stream}

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Hand the round's accepted replies (partition-id order) to the Flower strategy as Flower replies;
        its ArrayRecord becomes theta_g."""
        sent = {target.partition_id: message for message, target in self._pending}
        weight_key = getattr(self.flower, "weighted_by_key", "num-examples")
        array_key = getattr(self.flower, "arrayrecord_key", "arrays")
        loss_key = getattr(self.flower, "train_loss_key", "train_loss")
        flower_replies = []
        for r in replies:
            instruction = sent.get(r.partition_id) or Message(
                RecordDict(), self.setup.node_of[r.partition_id], MessageType.TRAIN)
            metrics = {weight_key: r.num_examples}
            if "train_loss" in r.metrics:
                metrics[loss_key] = r.metrics["train_loss"]
            content = RecordDict({array_key: self.flower_arrays(r.upload.state), "metrics": MetricRecord(metrics)})
            flower_replies.append(Message(content, reply_to=instruction))
        with quiet_flower():
            arrays, _ = self.flower.aggregate_train(server_round, flower_replies)
        if arrays is None:
            self.notices.append(f"{self.label} round {server_round}: Flower's {self.flower_class.__name__} "
                                f"aggregated nothing ({len(flower_replies)} replies); the global model is unchanged")
            return
        state = dict(self.global_state)
        for name in self.flower_names:
            value = np.asarray(arrays[name].numpy())
            target = self.global_state[name]
            if tuple(value.shape) != tuple(target.shape):
                raise RuntimeError(f"Flower's {self.flower_class.__name__} returned {name} with shape "
                                   f"{tuple(value.shape)}, not {tuple(target.shape)}")
            state[name] = torch.from_numpy(value.copy()).to(target.dtype)
        for name, tensor in self.global_state.items():
            if not tensor.is_floating_point() and replies:
                state[name] = replies[0].upload.state[name].clone()  # e.g. BN's num_batches_tracked
        self.global_state = state


class _RoundGrid:
    """The grid a Flower strategy's configure_train sees: this round's sampled clients as its nodes (padded
    with stand-ins when the strategy insists on more, e.g. min_available_nodes = 2 with one client a round).
    Nothing is ever sent through it."""

    def __init__(self, nodes: list[int], flower: Any):
        need = max(len(nodes), int(getattr(flower, "min_available_nodes", 0) or 0),
                   int(getattr(flower, "min_train_nodes", 0) or 0))
        padding = [-(i + 1) for i in range(need - len(nodes))]
        self.nodes = list(nodes) + padding

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"Grid.{name}: a Flower strategy inside fedlottery's loop only configures and "
                           "aggregates; fedlottery sends the messages")


_classes: dict[str, type[FlowerStrategy]] = {}


def flower_strategy(name: str) -> type[FlowerStrategy]:
    """The fedlottery strategy for `flwr:<ClassName>` (made once per process; works in any process, e.g. a Ray
    actor, since it is built from the name alone). KeyError for a class Flower lacks or that cannot run here."""
    if name in _classes:
        return _classes[name]
    if not is_flower_name(name):
        raise KeyError(f"{name!r} is not a Flower strategy name ({PREFIX}<ClassName>)")
    class_name = name[len(PREFIX):]
    known = ", ".join(PREFIX + n for n in flower_class_names())
    if class_name in UNSUPPORTED:
        raise KeyError(f"strategy {name!r}: Flower's {class_name} {UNSUPPORTED[class_name]}; "
                       f"Flower's strategies that run here: {known}")
    cls = getattr(flower_strategies, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, flower_strategies.Strategy)):
        raise KeyError(f"unknown strategy {name!r}: flwr.serverapp.strategy has no strategy class "
                       f"{class_name!r}; Flower's strategies that run here: {known}")
    qualname = f"Flower_{class_name}"
    sub = type(qualname, (FlowerStrategy,), {
        "name": name, "flower_class": cls, "__module__": __name__, "__qualname__": qualname,
        "__doc__": f"Flower's {class_name} (flwr.serverapp.strategy) as a dense baseline in fedlottery's loop.",
    })
    globals()[qualname] = sub  # picklable by reference
    _classes[name] = sub
    return sub


__all__ = ["FlowerOptions", "FlowerStrategy", "PREFIX", "flower_class_names", "flower_strategy", "is_flower_name"]
