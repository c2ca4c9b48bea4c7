"""The base every fedlottery strategy builds on: both halves of a federated algorithm in one class.

Server half (a Flower `Strategy`): keeps the global weights, theta_0 and every client's mask keyed by
partition id; sends each sampled client only its subnetwork (the mask only when the client lacks it);
decodes and validates replies; a subclass supplies the aggregation rule in `aggregate`.
Client half (`client_train`, a classmethod run inside the ClientApp): what a client does with what it got.
"""
from __future__ import annotations

import random
import zlib
from abc import abstractmethod
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedlottery.aggregation import ClientWeights
from fedlottery.comm import CodecError, pack_state, unpack_state
from fedlottery.config import CommConfig, LocalTrainingConfig
from fedlottery.sparsity import Mask
from fedlottery.training import Split


@dataclass
class NoOptions:
    """A strategy without options of its own."""


@dataclass
class ClientData:
    """A client's local splits as tensors (see fedlottery.data.partitions for who gets what)."""

    partition_id: int
    train: Split
    val: Split
    test: Split


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


@dataclass
class ClientUpdate:
    """What a client procedure returns; the ClientApp encodes it for the uplink."""

    state: dict[str, torch.Tensor]
    mask: Mask
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    send_state: bool = True  # False: only metrics go up (e.g. FLASH's sparsity hunt reports densities)


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
    config), `sample`, and `global_model_state` (what "the global model" is for global evaluation).
    """

    name: ClassVar[str] = ""
    options_cls: ClassVar[type] = NoOptions
    broadcast: ClassVar[bool] = False

    # ---- client half ------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        """The client half: train (and prune) on `task`, return what to upload."""

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        """Tensors each client keeps to itself: never sent either way, never overwritten by the server."""
        return frozenset()

    # ---- server half ------------------------------------------------------------------------------------
    def __init__(self, setup: ServerSetup, options: Any = None):
        self.setup = setup
        self.options = options if options is not None else self.options_cls()
        self.global_state = {k: v.clone() for k, v in setup.theta0.items()}
        self.shapes = {n: setup.theta0[n].shape for n in setup.prunable}
        self.masks: dict[int, Mask] = {pid: Mask.ones(self.shapes) for pid in setup.node_of}
        # What each client holds (None: unknown, after a lost reply); a new client holds the dense mask.
        self.client_holds: dict[int, Mask | None] = {pid: Mask.ones(self.shapes) for pid in setup.node_of}
        self.personal = self.personal_names(self.options, setup.batchnorm)
        self.rng = random.Random(setup.seed)
        self.partition_of = {node: pid for pid, node in setup.node_of.items()}
        self.failures: list[str] = []

    def summary(self) -> None:
        log(INFO, "%s: %d clients, %d per round", self.name, len(self.setup.node_of), self.setup.clients_per_round)

    @staticmethod
    def uploads(replies: list[Reply], weighted: bool) -> list[ClientWeights]:
        """The decoded uploads, weighted by sample count or (weighted=False) all alike."""
        if not weighted:
            for r in replies:
                r.upload.weight = 1.0
        return [r.upload for r in replies]

    @abstractmethod
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """The server rule: fold the round's decoded replies into `global_state`."""

    def sample(self, server_round: int) -> list[int]:
        """Partition ids for this round, from the seeded RNG (reproducible whatever the node ids)."""
        return sorted(self.rng.sample(sorted(self.setup.node_of), self.setup.clients_per_round))

    def instructions(self, partition_id: int, server_round: int) -> dict[str, Any]:
        """Extra config for one client's message (scalars); it reaches `ClientTask.instructions`."""
        return {}

    def global_model_state(self) -> dict[str, torch.Tensor]:
        """The model evaluated on the global test set as "the global model"."""
        return self.global_state

    def personal_state(self, partition_id: int) -> dict[str, torch.Tensor]:
        """The weights client `partition_id` is sent: theta_g under its mask."""
        mask = self.masks[partition_id]
        return {
            name: (t * mask[name].to(t.dtype) if name in mask else t) for name, t in self.global_state.items()
        }

    def downlink(self, partition_id: int, message_type: str, server_round: int) -> Message:
        """Only what the client lacks: its subnetwork's values, plus the mask news against what it holds
        (or, for a broadcast strategy, the same dense model for everyone)."""
        mask = self.masks[partition_id]
        comm = self.setup.comm
        broadcast = self.broadcast and self.client_holds[partition_id] is not None  # else resync by unicast
        if broadcast:
            arrays = pack_state(self.global_state, skip=self.personal, values=comm.values)
        else:
            arrays = pack_state(self.personal_state(partition_id), mask, self.client_holds[partition_id],
                                self.personal, comm.codec, comm.values)
        config = ConfigRecord({
            "strategy": self.name, "round": server_round, "partition-id": partition_id,
            "broadcast": broadcast, "mask-crc": mask_crc(mask),
            **self.instructions(partition_id, server_round),
        })
        return Message(RecordDict({"model": arrays, "config": config}), self.setup.node_of[partition_id],
                       message_type)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        return [self.downlink(pid, MessageType.TRAIN, server_round) for pid in self.sample(server_round)]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        return [self.downlink(pid, MessageType.EVALUATE, server_round) for pid in sorted(self.setup.node_of)]

    def note_sent(self, message: Message) -> None:
        """After a message went out: the client now holds the mask it was sent."""
        pid = self.partition_of[message.metadata.dst_node_id]
        self.client_holds[pid] = self.masks[pid]

    def _decode(self, reply: Message) -> Reply:
        if reply.has_error():
            raise CodecError(f"client error: {reply.error.reason}")
        metrics = dict(reply.content["metrics"])
        pid = int(metrics.pop("partition-id"))
        expected_node = self.setup.node_of.get(pid)
        if expected_node != reply.metadata.src_node_id:
            raise CodecError(f"reply claims partition {pid}, which node {reply.metadata.src_node_id} does not hold")
        num_examples = int(metrics.pop("num-examples"))
        known = self.masks[pid]
        state, sent = unpack_state(reply.content["model"], self.global_state, known, set(self.setup.prunable))
        mask = known if sent is None else sent
        state = {**{k: self.global_state[k] for k in self.personal}, **state}
        dense = mask.num_kept() == mask.numel()
        return Reply(pid, ClientWeights(state, None if dense else mask, num_examples), num_examples, metrics)

    def decode_replies(self, replies: Iterable[Message]) -> list[Reply]:
        """Decode every reply; a bad one is logged and dropped (its client's mask is marked unknown)."""
        decoded = []
        for reply in replies:
            try:
                decoded.append(self._decode(reply))
            except (CodecError, KeyError, ValueError) as err:
                pid = self.partition_of.get(reply.metadata.src_node_id)
                if pid is not None:
                    self.client_holds[pid] = None
                self.failures.append(f"partition {pid}: {err}")
                log(WARNING, "dropping a reply from partition %s: %s", pid, err)
        return decoded

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self.decode_replies(replies)
        for r in decoded:
            mask = r.upload.mask if r.upload.mask is not None else Mask.ones(self.shapes)
            self.masks[r.partition_id] = mask
            self.client_holds[r.partition_id] = mask
        if decoded:
            self.aggregate(server_round, decoded)
        metrics = {"clients": float(len(decoded))}
        for key in sorted({k for r in decoded for k in r.metrics}):
            values = [r.metrics[key] for r in decoded if key in r.metrics]
            metrics[key] = float(np.mean(values))
        return None, MetricRecord(metrics)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        results = self.evaluation_results(replies)
        if not results:
            return None
        return MetricRecord({"personalized-acc-mean": float(np.mean([m["test-acc"] for m in results.values()]))})

    def evaluation_results(self, replies: Iterable[Message]) -> dict[int, dict[str, float]]:
        """Each evaluated client's metrics on its whole local test set ("test-acc", ...), by partition id."""
        return {r.partition_id: r.metrics for r in self.decode_replies(replies)}

    def density_mean(self) -> float:
        return float(np.mean([m.density() for m in self.masks.values()]))
