"""The base every fedlottery strategy builds on: both halves of a federated algorithm in one class.

Server half (a Flower `Strategy`): keeps the global weights, theta_0 and every client's mask keyed by
partition id; sends each sampled client only its subnetwork (the mask only when the client lacks it);
checks every reply (strategies.replies) and aggregates the accepted ones in partition-id order, so the
result never depends on the order replies arrive in; a subclass supplies the rule in `aggregate`.
Client half (`client_train`, a classmethod run inside the ClientApp): what a client does with what it got.
"""
from __future__ import annotations

import math
import zlib
from abc import abstractmethod
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedlottery.aggregation import ClientWeights
from fedlottery.comm import CodecError, complete_mask, pack_state, unpack_state, uplink
from fedlottery.config import CommConfig, LocalTrainingConfig
from fedlottery.plain_state import from_plain, to_plain
from fedlottery.schedule import scheduled_clients
from fedlottery.sparsity import Mask
from fedlottery.sparsity.mask_table import MaskTable
from fedlottery.training import Split
from strategies.replies import (
    ReplyRejected, Sent, check_batchnorm, check_count, check_finite, check_mask, check_metrics, check_tensor_set,
    content_of, one_line,
)


RELAY_PREFIX = "relay/"  # downlink records carrying another client's sparse model (DisPFL's neighbours)
DENSITY_SLACK = 1e-3  # per-layer rounding when a prune step is clamped to its target


def one_step_floor(sent: Mask, rate: float, target: float) -> float:
    """The lowest mask density an honest client can upload after one step removing `rate` of `sent`'s kept
    entries, clamped at `target` (reply check `min_density`; less the per-layer rounding slack)."""
    one_step = sent.density() * (1 - rate)
    return max(one_step, min(sent.density(), target)) - DENSITY_SLACK


@dataclass
class NoOptions:
    """A strategy without options of its own."""


class ClientData:
    """A client's local splits as tensors (see fedlottery.data.partitions for who gets what).

    `test` may be given as a function returning the split: it is then built the first time it is read. A client's
    test set can be far larger than its training data (Table-2 MNIST: all ~2,000 test images of its two labels
    against 32 training images), and a training round never reads it, so the client actors leave it unbuilt."""

    def __init__(self, partition_id: int, train: Split, val: Split, test: Split | Callable[[], Split]):
        self.partition_id, self.train, self.val = partition_id, train, val
        self._test = test

    @property
    def test(self) -> Split:
        if callable(self._test):
            self._test = self._test()
        return self._test

    def __repr__(self) -> str:
        return f"ClientData(partition {self.partition_id}, {len(self.train[1])} train, {len(self.val[1])} val)"


@dataclass
class ClientTask:
    """Everything a client procedure may use in one round."""

    model: nn.Module  # holds the downloaded weights; pruned entries are zero
    mask: Mask  # the client's current mask
    theta0: dict[str, torch.Tensor]  # the shared initial weights, rebuilt from the seed (never sent)
    data: ClientData
    local: LocalTrainingConfig
    options: Any  # the strategy's typed options
    generator: torch.Generator
    server_round: int
    memory: dict[str, float] = field(default_factory=dict)  # this client's own scalars, kept across rounds
    instructions: dict[str, Any] = field(default_factory=dict)  # what the server's `instructions` said
    # Other clients' sparse models the server relayed (records named RELAY_PREFIX + partition id): (state, mask)
    relayed: dict[int, tuple[dict[str, torch.Tensor], Mask]] = field(default_factory=dict)
    trained: dict[str, torch.Tensor] = field(default_factory=dict)  # this client's last trained weights, if kept
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # what its last `ClientUpdate.keep` stored


@dataclass
class ClientUpdate:
    """What a client procedure returns; the ClientApp encodes it for the uplink."""

    state: dict[str, torch.Tensor]
    mask: Mask
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    send_state: bool = True  # False: only metrics go up (e.g. FLASH's sparsity hunt reports densities)
    # What goes up instead of `state`, which stays the model the client keeps (personal tensors, `deployed`):
    # FedPM uploads one sampled mask (bool tensors travel as masks alone) but deploys theta_0 under its mask.
    upload: dict[str, torch.Tensor] | None = None
    # Tensors the client stores for itself beside the model, never sent (Ditto's personal model v_k): they come
    # back as `ClientTask.kept` when it next trains and reach `evaluation_state`. None: keep what it held.
    keep: dict[str, torch.Tensor] | None = None


@dataclass
class ServerSetup:
    """What the server knows when a strategy starts."""

    theta0: dict[str, torch.Tensor]
    prunable: list[str]
    node_of: dict[int, int]  # partition id -> Flower node id (node ids are random per run)
    clients_per_round: int
    seed: int
    local: LocalTrainingConfig
    batchnorm: list[str] = field(default_factory=list)  # every BatchNorm tensor's name
    comm: CommConfig = field(default_factory=CommConfig)
    train_sizes: dict[int, int] = field(default_factory=dict)  # partition id -> training images (reply checks)
    test_sizes: dict[int, int] = field(default_factory=dict)  # partition id -> local test images
    rounds: int = 0  # the run's total rounds (annealing schedules); 0: unknown (a strategy needing it says so)
    head: list[str] = field(default_factory=list)  # the model's head tensors (fedlottery.models.head_names)
    label: str = ""  # what this run of the strategy is called (a variant's label; "": the strategy's name)


@dataclass
class Failure:
    """A client that gave no usable reply: the one-line cause, and the full text for the run's log."""

    server_round: int
    partition_id: int
    phase: str  # "train" or "evaluate"
    cause: str
    detail: str = ""

    def line(self) -> str:
        return f"round {self.server_round} {self.phase} partition {self.partition_id}: {self.cause}"


@dataclass
class Reply:
    """A decoded, validated client reply."""

    partition_id: int
    upload: ClientWeights
    num_examples: int
    metrics: dict[str, float]


def mask_crc(mask: Mask) -> int:
    """A checksum both sides compare, so a client never trains under a mask the server did not mean."""
    crc = 0
    for name, (_, bits) in mask.to_packed().items():
        crc = zlib.crc32(name.encode() + bits.tobytes(), crc)
    return crc


class FederatedStrategy(Strategy):
    """Base class: subclass, set `name` (and `options_cls`), implement `client_train` and `aggregate`.

    Optional hooks: `personal_names` (tensors that never leave a client), `broadcast` (send every client
    the same dense global model; each applies the mask it holds), `instructions` (extra per-message
    config), `sample`, `global_model_state` (what "the global model" is for global evaluation), and for the
    reply checks: `metric_bounds` (the metrics a client may report, with their ranges), `regrows` (uploaded
    masks may leave the mask sent, within its budget), `max_abs_value`, `min_density` and `expects_upload`.
    `personal_tensors` is `personal_names` given every tensor name (a strategy that keeps all, or every
    non-prunable tensor, home needs them); `communicates = False` says a real deployment would send nothing
    at all (local training only), so the meter counts no bytes; `ClientUpdate.upload` sends something other
    than the model the client keeps; `personal_entries = True` says the entries outside a client's mask are
    its own weights (kept from its last training, never sent), not zeros (FedSelect). `keeps_trained = True`
    makes each client keep its last trained weights and get them back as `ClientTask.trained` (DisPFL averages
    its own model with its neighbours'); `initial_mask` is a mask both halves derive from the seed, so nothing
    is sent for it (FedSpa's and DisPFL's per-client random masks, FedDST's pruned initialisation).
    `keeps_head = True`
    makes the model's head personal (FedPer, FedRep, FedBABU); `ClientUpdate.keep` stores tensors beside the
    model on the client and `evaluation_state` picks what a client evaluates as its personalised model (Ditto).
    """

    name: ClassVar[str] = ""
    options_cls: ClassVar[type] = NoOptions
    # True: the model's head (fedlottery.models.head_names) is personal too, besides `personal_tensors`
    # (FedPer, FedRep, FedBABU); both halves learn the head from the model, see `personal_set`.
    keeps_head: ClassVar[bool] = False
    # What a checkpoint saves (the server state that changes between rounds); a subclass with state of its own
    # adds its attributes. Everything else is rebuilt from the set-up and options (`rebuilt_fields`). (No RNG:
    # the schedule is a pure function of seed and round, fedlottery.schedule; older checkpoints' "rng" is ignored.)
    state_fields: ClassVar[tuple[str, ...]] = (
        "global_state", "masks", "client_holds", "state_version", "state_keep", "failures")
    rebuilt_fields: ClassVar[frozenset[str]] = frozenset(
        {"setup", "options", "shapes", "personal", "round_failures", "notices", "_pending", "label"})
    broadcast: ClassVar[bool] = False
    communicates: ClassVar[bool] = True
    regrows: ClassVar[bool] = False
    personal_entries: ClassVar[bool] = False
    keeps_trained: ClassVar[bool] = False
    max_abs_value: ClassVar[float] = 1e6  # larger uploaded values are rejected as diverged or forged
    metric_bounds: ClassVar[dict[str, tuple[float, float]]] = {}
    BASE_METRICS: ClassVar[dict[str, tuple[float, float]]] = {"mask-changed": (0.0, 1.0)}
    EVAL_METRICS: ClassVar[dict[str, tuple[float, float]]] = {
        "test-acc": (0.0, 1.0), "test-loss": (0.0, math.inf), "deployed-acc": (0.0, 1.0),
        "finetuned-acc": (0.0, 1.0)}

    # ---- client half ------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        """The client half: train (and prune) on `task`, return what to upload."""

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        """Tensors each client keeps to itself: never sent either way, never overwritten by the server."""
        return frozenset()

    @classmethod
    def personal_tensors(cls, options: Any, names: list[str], prunable: list[str], batchnorm: list[str]
                         ) -> frozenset[str]:
        """`personal_names`, given every tensor name of the model, the prunable ones and the BatchNorm ones;
        both halves ask this one."""
        return cls.personal_names(options, batchnorm)

    @classmethod
    def initial_mask(cls, options: Any, seed: int, partition_id: int, theta0: dict[str, torch.Tensor],
                     prunable: list[str]) -> Mask | None:
        """The mask a fresh client starts with, derived alike on both sides (None: the dense mask)."""
        return None

    @classmethod
    def personal_set(cls, options: Any, names: list[str], prunable: list[str], batchnorm: list[str],
                     head: list[str]) -> frozenset[str]:
        """Every tensor that stays on the client: `personal_tensors`, plus the head when `keeps_head`. Both
        halves ask this one, so they always agree on what travels."""
        personal = cls.personal_tensors(options, names, prunable, batchnorm)
        if not cls.keeps_head:
            return personal
        if not head:
            raise ValueError(f"strategy {cls.name!r} keeps the model's head on each client, but no head was named: "
                             "give ServerSetup.head = fedlottery.models.head_names(model)")
        return personal | frozenset(head)

    @classmethod
    def evaluation_state(cls, options: Any, received: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        """The weights a client evaluates as its personalised model ("test-acc", and the start of the fine-tuned
        copy): by default `received`, what it was sent with its personal tensors in; `kept` is what its last
        `ClientUpdate.keep` stored (Ditto evaluates its personal model from there)."""
        return received

    # ---- server half ------------------------------------------------------------------------------------
    def __init__(self, setup: ServerSetup, options: Any = None):
        self.setup = setup
        self.label = setup.label or self.name  # rows, messages and client state are keyed by it
        self.options = options if options is not None else self.options_cls()
        self.global_state = {k: v.clone() for k, v in setup.theta0.items()}
        self.shapes = {n: setup.theta0[n].shape for n in setup.prunable}
        self.masks = MaskTable()  # bit-packed, shared: n/8 bytes per distinct mask
        # The mask in each client's stored state version (a new client holds its initial mask).
        self.client_holds = MaskTable()
        for pid, mask in self.initial_masks().items():
            self.masks[pid] = mask
            self.client_holds[pid] = mask
        # Which client-state version each client starts from (the round of its last accepted reply), and
        # which one the last checkpoint holds (clients never delete that one).
        self.state_version: dict[int, int] = {pid: 0 for pid in setup.node_of}
        self.state_keep: dict[int, int] = {pid: 0 for pid in setup.node_of}
        self.personal = self.personal_set(self.options, list(setup.theta0), list(setup.prunable), setup.batchnorm,
                                          list(setup.head))
        self.failures: list[str] = []  # every failure of the run, one line each
        self.round_failures: list[Failure] = []  # this round's (and phase's), for the run's log
        # things this round did that change the result without failing (e.g. the global model kept), said on
        # the console even with --quiet; the round loop takes and clears them
        self.notices: list[str] = []
        self._pending: list[tuple[Message, Sent]] = []  # this round's messages and what each carried

    def initial_masks(self) -> dict[int, Mask]:
        """Every client's starting mask (`initial_mask`, or the dense one)."""
        dense = Mask.ones(self.shapes)
        out = {}
        for pid in self.setup.node_of:
            mask = self.initial_mask(self.options, self.setup.seed, pid, self.setup.theta0, list(self.setup.prunable))
            out[pid] = dense if mask is None else mask
        return out

    def summary(self) -> None:
        log(INFO, "%s: %d clients, %d per round", self.label, len(self.setup.node_of), self.setup.clients_per_round)

    @staticmethod
    def uploads(replies: list[Reply], weighted: bool) -> list[ClientWeights]:
        """The decoded uploads, weighted by sample count or (weighted=False) all alike."""
        if not weighted:
            for r in replies:
                r.upload.weight = 1.0
        return [r.upload for r in replies]

    @abstractmethod
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """The server rule: fold the round's decoded replies (sorted by partition id) into `global_state`."""

    def sample(self, server_round: int) -> list[int]:
        """This round's partition ids: the run's paired schedule (fedlottery.schedule), the same clients for every
        strategy of the run whatever the node ids, so methods are compared on the same draws. A strategy that
        must draw clients of its own does so from a stream named by its purpose (see FLASH's hunt)."""
        return scheduled_clients(self.setup.seed, server_round, self.setup.node_of, self.setup.clients_per_round)

    def instructions(self, partition_id: int, server_round: int) -> dict[str, Any]:
        """Extra config for one client's message (scalars); it reaches `ClientTask.instructions`."""
        return {}

    def global_model_state(self) -> dict[str, torch.Tensor]:
        """The model evaluated on the global test set as "the global model"."""
        return self.global_state

    def min_density(self, partition_id: int, sent: Mask) -> float:
        """The lowest mask density an honest client can upload this round (reply check)."""
        return 0.0

    def expects_upload(self, partition_id: int, server_round: int) -> bool:
        """Whether this round's training reply must carry the model (False: metrics only)."""
        return True

    def personal_state(self, partition_id: int, mask: Mask | None = None) -> dict[str, torch.Tensor]:
        """The weights client `partition_id` is sent: theta_g under its mask (pass it when already unpacked)."""
        mask = self.masks[partition_id] if mask is None else mask
        return {
            name: (t * mask[name].to(t.dtype) if name in mask else t) for name, t in self.global_state.items()
        }

    def downlink(self, partition_id: int, message_type: str, server_round: int) -> Message:
        """Only what the client lacks: its subnetwork's values, plus the mask news against what it holds
        (or, for a broadcast strategy, the same dense model for everyone)."""
        mask, held = self.masks[partition_id], self.client_holds[partition_id]
        arrays = self.downlink_model(partition_id, message_type, mask, held)
        config = ConfigRecord({
            "strategy": self.label, "round": server_round, "partition-id": partition_id,
            "broadcast": self.broadcast, "mask-crc": mask_crc(held if self.broadcast else mask),
            "state-version": self.state_version[partition_id], "state-keep": self.state_keep[partition_id],
            **self.instructions(partition_id, server_round),
        })
        content = {"model": arrays, "config": config, **self.relays(partition_id, message_type, server_round)}
        message = Message(RecordDict(content), self.setup.node_of[partition_id], message_type)
        self._pending.append((message, Sent(partition_id, held if self.broadcast else mask, held)))
        return message

    def downlink_model(self, partition_id: int, message_type: str, mask: Mask, held: Mask) -> ArrayRecord:
        """The "model" record: the client's subnetwork against the mask it holds (broadcast: the dense model)."""
        comm = self.setup.comm
        if self.broadcast:
            return pack_state(self.global_state, skip=self.personal, values=comm.values)
        return pack_state(self.personal_state(partition_id, mask), mask, held, self.personal, comm.codec, comm.values)

    def relays(self, partition_id: int, message_type: str, server_round: int) -> dict[str, ArrayRecord]:
        """Other clients' models relayed to this one (RELAY_PREFIX + their partition id; DisPFL's neighbours)."""
        return {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._pending = []
        return [self.downlink(pid, MessageType.TRAIN, server_round) for pid in self.sample(server_round)]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        return self.evaluation_messages(server_round, sorted(self.setup.node_of))

    def evaluation_messages(self, server_round: int, partition_ids: Iterable[int]) -> list[Message]:
        """Evaluation messages for these clients (the server sends an all-client evaluation in chunks, so
        its memory does not grow with the population)."""
        self._pending = []
        return [self.downlink(pid, MessageType.EVALUATE, server_round) for pid in partition_ids]

    def mark_checkpoint(self) -> None:
        """A checkpoint now holds every client's current state version: clients must keep those."""
        self.state_keep = dict(self.state_version)

    # ---- replies ----------------------------------------------------------------------------------------
    def _check_reply(self, reply: Message, sent: Sent, server_round: int, training: bool) -> Reply:
        if reply.has_error():
            raise ReplyRejected(one_line(reply.error.reason))
        model, raw = content_of(reply)
        metrics = dict(raw)
        pid = sent.partition_id
        claimed = metrics.pop("partition-id", None)
        if claimed != pid:
            raise ReplyRejected(f"reply claims partition {claimed!r}, but was sent to partition {pid}")
        sizes = self.setup.train_sizes if training else self.setup.test_sizes
        limit = sizes.get(pid, 0)
        num_examples = check_count(metrics.pop("num-examples", None), 1 if training else limit, limit)
        if not training:
            if len(model):
                raise ReplyRejected("an evaluation reply must carry no model")
            return Reply(pid, ClientWeights({}, None, num_examples), num_examples,
                         check_metrics(metrics, self.EVAL_METRICS))
        metrics = check_metrics(metrics, {**self.BASE_METRICS, **self.metric_bounds})
        if not self.expects_upload(pid, server_round):
            if len(model):
                raise ReplyRejected("this round's reply must carry metrics only")
            return Reply(pid, ClientWeights({}, sent.mask, num_examples), num_examples, metrics)
        model = self._rebuild_upload(model, sent)
        expected = set(self.global_state) - self.personal
        check_tensor_set(model, expected, {n: self._value_type(n) for n in expected})
        try:
            state, uploaded = unpack_state(model, self.global_state, sent.mask, set(self.setup.prunable))
        except CodecError as err:
            raise ReplyRejected(str(err)) from None
        check_finite(state, self.max_abs_value)
        uploaded = complete_mask(uploaded, sent.mask)  # personal prunable tensors (a head) keep the mask sent
        check_batchnorm(state, self.setup.batchnorm)
        mask = uploaded if uploaded is not None else sent.mask
        check_mask(mask, sent.mask, self.regrows, self.min_density(pid, sent.mask))
        state = {**{k: self.global_state[k] for k in self.personal}, **state}
        dense = mask.num_kept() == mask.numel()
        return Reply(pid, ClientWeights(state, None if dense else mask, num_examples), num_examples, metrics)

    def _rebuild_upload(self, model: ArrayRecord, sent: Sent) -> ArrayRecord:
        """A compressed uplink (comm.uplink) carries updates: rebuild theta_sent + Delta-hat from what this
        client was sent (theta_g under the mask it used), so the checks below see plain tensors."""
        if uplink.method_of(self.setup.comm.uplink) is None:
            return model
        try:
            return uplink.rebuild_record(model, self.personal_state(sent.partition_id, sent.mask), sent.mask,
                                         self.setup.comm.uplink)
        except (CodecError, ValueError) as err:
            raise ReplyRejected(str(err)) from None

    def _value_type(self, name: str) -> str:
        tensor = self.global_state[name]
        if not tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
        return self.setup.comm.values if name in self.shapes else "float32"

    def decode_replies(self, server_round: int, replies: Iterable[Message], training: bool = True) -> list[Reply]:
        """Every acceptable reply, sorted by partition id; each rejected or missing one is recorded as a
        `Failure` (one line in `failures`, the full text in `round_failures`)."""
        sent = {m.metadata.message_id: target for m, target in self._pending}  # ids: set when Flower pushed them
        accepted: dict[int, Reply] = {}
        answered: set[int] = set()
        phase = "train" if training else "evaluate"
        self.round_failures = []
        for reply in replies:
            target = sent.get(reply.metadata.reply_to_message_id)
            try:
                if target is None:
                    raise ReplyRejected("answers no message this server sent this round")
                if target.partition_id in answered:
                    raise ReplyRejected("a second reply from this partition this round")
                answered.add(target.partition_id)
                decoded = self._check_reply(reply, target, server_round, training)
                accepted[decoded.partition_id] = decoded
            except ReplyRejected as err:
                pid = target.partition_id if target is not None else -1
                detail = reply.error.reason if reply.has_error() else str(err)
                self._fail(server_round, pid, phase, str(err), detail)
        for target in sent.values():
            if target.partition_id not in answered:
                self._fail(server_round, target.partition_id, phase,
                           "no reply before the round's deadline (simulation.round_timeout)")
        return [accepted[pid] for pid in sorted(accepted)]

    def _fail(self, server_round: int, pid: int, phase: str, cause: str, detail: str = "") -> None:
        failure = Failure(server_round, pid, phase, cause, detail or cause)
        self.round_failures.append(failure)
        self.failures.append(failure.line())
        log(WARNING, "dropping a reply: %s", failure.line())

    def sent_to(self, message: Message) -> Sent:
        """What this round's `message` carried (for checks and tests)."""
        return next(target for m, target in self._pending if m is message)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self.decode_replies(server_round, replies, training=True)
        for r in decoded:  # the client saved this round's state under this mask: start it from there
            mask = r.upload.mask if r.upload.mask is not None else Mask.ones(self.shapes)
            self.masks[r.partition_id] = mask
            self.client_holds[r.partition_id] = mask
            self.state_version[r.partition_id] = server_round
        if decoded:
            self.aggregate(server_round, decoded)
        metrics = {"clients": float(len(decoded))}
        for key in sorted({k for r in decoded for k in r.metrics}):
            values = [r.metrics[key] for r in decoded if key in r.metrics]
            metrics[key] = float(np.mean(values))
        return None, MetricRecord(metrics)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        results = self.evaluation_results(server_round, replies)
        if not results:
            return None
        return MetricRecord({"personalized-acc-mean": float(np.mean([m["test-acc"] for m in results.values()]))})

    def evaluation_results(self, server_round: int, replies: Iterable[Message]) -> dict[int, dict[str, float]]:
        """Each evaluated client's metrics on its whole local test set ("test-acc", ...), by partition id."""
        return {r.partition_id: r.metrics for r in self.decode_replies(server_round, replies, training=False)}

    def density_mean(self) -> float:
        return float(np.mean([self.masks.density(pid) for pid in sorted(self.masks)]))

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything this strategy needs to go on, as plain data (its `state_fields`; the rest is rebuilt
        from the set-up and options on resume)."""
        return {name: to_plain(getattr(self, name), f"{self.name}.{name}") for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from `state_dict()`'s output (a checkpoint written by the same strategy and config). Saved fields
        this version no longer declares (an older checkpoint's "rng") are ignored."""
        missing = [name for name in self.state_fields if name not in state]
        if missing:
            raise ValueError(f"{self.name}: the saved state lacks {', '.join(missing)}")
        for name in self.state_fields:
            setattr(self, name, from_plain(state[name]))
