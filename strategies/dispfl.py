"""DisPFL (Dai et al., ICML 2022, arXiv 2206.00187): decentralised personalised FL with personalised sparse masks
(ALGORITHMS.md section 9), simulated with the server as a relay.

Every client holds its own mask at density d from round 1 (a random mask with ERK or uniform layer budgets,
seeded by (seed, partition), derived alike on both sides, so nothing is sent for it) and its last sparse model
(theta_0 under its mask until it first trains). Each round a sampled client k:
1. takes the last sparse models of K random other clients (`neighbours`: a fraction of all clients, or a count),
   plus its own (`include_self`, as the authors' code does), and averages each entry over those whose masks keep
   it, unweighted (an entry none keeps keeps k's value; non-prunable tensors: the plain mean);
2. multiplies the result by its own mask, trains E epochs sparsely;
3. drops alpha_t = alpha * (1 + cos(pi * t / T)) / 2 (T = rounds) of each layer's smallest kept weights and
   regrows as many at the free positions with the largest |gradient| (`regrow: random` is the flag the authors'
   CIFAR-10 script passes), regrown weights at zero, so the density stays d.

The relay: the server keeps every client's last sparse model (values under its mask, compactly). The downlink to
k carries each neighbour's sparse model as that neighbour would send it, its kept values and its mask coded in
full (k never held that mask), one record per neighbour (RELAY_PREFIX + partition id); k's own mask and model
stay on k (`keeps_trained`), so nothing of k's own is sent. The client aggregates (step 1 runs on the client,
as in the decentralised original). The uplink is k's new sparse model and its mask change. The meter thus counts
what the neighbours would really send, K times d*n values plus K masks per participant. Neighbours are drawn
from a stream seeded by (seed, round, partition), never the sampler's.

There is no global model: "the global model" scored on the global test set is the holders' mean of the round's
uploads (informational). Personalised evaluation: each client's last sparse model (the server's copy, the
relay sending it back only for the evaluation, whose bytes are counted apart).

Defaults (the authors' CIFAR-10 script): density 0.5, 10% neighbours, alpha (anneal factor) 0.5, gradient
regrowth per the paper (the script's flag: `regrow: random`). Not followed: their active-client draw (each client
active with a probability) -- here the run's sampler picks clients_per_round.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, MessageType

from fedlottery.aggregation import ClientWeights, masked_mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask
from fedlottery.training import train
from fedlottery.comm import pack_state
from strategies.base import RELAY_PREFIX, ClientTask, ClientUpdate, FederatedStrategy, Reply
from strategies.dst import AnnealedDSTStrategy, Regrow, check_unit, random_client_mask, readjust


@dataclass
class DisPFLOptions:
    density: float = 0.5  # every client's fixed mask density (`dense_ratio`)
    distribution: Literal["erk", "uniform"] = "erk"
    neighbours: float = 0.1  # < 1: a fraction of all clients (`frac`); >= 1: a count K
    include_self: bool = True  # the client's own last model joins the average (the authors' code)
    alpha: float = 0.5  # the anneal factor: drop rate at round 0, cosine-annealed to 0 at t_end
    t_end: int | None = None  # None: the run's total rounds
    regrow: Regrow = "gradient"  # the paper; "random": the authors' CIFAR-10 script
    grad_batches: int = 1

    def validate(self, path: str) -> None:
        check_unit(path, density=self.density, alpha=self.alpha)
        if self.neighbours <= 0 or (self.neighbours >= 1 and self.neighbours != int(self.neighbours)):
            raise ConfigError(f"{path}.neighbours: a fraction in (0, 1) or a whole count >= 1, got {self.neighbours}")
        if self.grad_batches < 1 or (self.t_end is not None and self.t_end < 1):
            raise ConfigError(f"{path}: grad_batches and t_end must be >= 1")


def neighbour_average(own: dict[str, torch.Tensor], own_mask: Mask,
                      others: list[tuple[dict[str, torch.Tensor], Mask]], include_self: bool
                      ) -> dict[str, torch.Tensor]:
    """Step 1-2: each prunable entry the unweighted mean over the models whose masks keep it (own model included
    when `include_self`; an entry none keeps stays k's own), then k's own mask applied."""
    models = ([(own, own_mask)] if include_self else []) + list(others)
    if not models:
        return dict(own)
    averaged = masked_mean(own, [ClientWeights(state, mask, 1.0) for state, mask in models], own_mask.names())
    return {n: (t * own_mask[n].to(t.dtype) if n in own_mask else t) for n, t in averaged.items()}


class DisPFLStrategy(AnnealedDSTStrategy):
    """DisPFL via a relay: each client averages its neighbours' sparse models over holders, trains, drops, regrows."""

    name = "dispfl"
    options_cls = DisPFLOptions
    regrows = True
    keeps_trained = True  # the client's own last model stays on the client (step 1 reads it there)
    state_fields = FederatedStrategy.state_fields + ("models",)
    metric_bounds = {"density": (0.0, 1.0), "drop-rate": (0.0, 1.0), "neighbours": (0.0, math.inf)}

    def __init__(self, setup, options: Any = None):
        super().__init__(setup, options)
        # partition id -> its last sparse model: prunable tensors as their kept values (1-D), the rest dense
        self.models: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def initial_mask(cls, options: Any, seed: int, partition_id: int, theta0: dict[str, torch.Tensor],
                     prunable: list[str]) -> Mask:
        shapes = {n: theta0[n].shape for n in prunable}
        return random_client_mask(shapes, options.density, options.distribution, seed, partition_id, cls.name)

    # ---- the relay's store ----
    def last_model(self, partition_id: int, mask: Mask | None = None) -> dict[str, torch.Tensor]:
        """Client `partition_id`'s last sparse model, dense with zeros outside its mask."""
        mask = self.masks[partition_id] if mask is None else mask
        stored = self.models.get(partition_id)
        out = {}
        for name, t0 in self.setup.theta0.items():
            if name not in mask:
                out[name] = (stored[name] if stored is not None else t0).clone()
                continue
            dense = torch.zeros_like(t0)
            dense[mask[name]] = stored[name] if stored is not None else t0[mask[name]]
            out[name] = dense
        return out

    def personal_state(self, partition_id: int, mask: Mask | None = None) -> dict[str, torch.Tensor]:
        return self.last_model(partition_id, mask)

    # ---- neighbours and the downlink ----
    def neighbour_count(self) -> int:
        n, k = len(self.setup.node_of), self.options.neighbours
        count = int(k) if k >= 1 else math.ceil(k * n)
        return max(0, min(count, n - 1))

    def neighbours_of(self, partition_id: int, server_round: int) -> list[int]:
        """K other clients from a stream seeded by (seed, round, partition) (never the sampler's)."""
        stream = random.Random(zlib.crc32(f"{self.setup.seed}/{server_round}/{partition_id}/dispfl".encode()))
        others = [p for p in sorted(self.setup.node_of) if p != partition_id]
        return sorted(stream.sample(others, self.neighbour_count()))

    def downlink_model(self, partition_id: int, message_type: str, mask: Mask, held: Mask) -> ArrayRecord:
        if message_type == MessageType.TRAIN:
            return ArrayRecord()  # the client holds its own mask and model: nothing of its own travels
        return super().downlink_model(partition_id, message_type, mask, held)

    def relays(self, partition_id: int, message_type: str, server_round: int) -> dict[str, ArrayRecord]:
        if message_type != MessageType.TRAIN:
            return {}
        comm, out = self.setup.comm, {}
        for j in self.neighbours_of(partition_id, server_round):
            mask = self.masks[j]  # self-contained: values plus the full mask (no reference)
            out[f"{RELAY_PREFIX}{j}"] = pack_state(self.last_model(j, mask), mask, None, self.personal, comm.codec,
                                                   comm.values)
        return out

    # ---- client half ----
    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: DisPFLOptions = task.options
        rate, cfg, mask = float(task.instructions["rate"]), task.local.as_training(), task.mask
        own = task.trained or {n: (t * mask[n].to(t) if n in mask else t) for n, t in task.theta0.items()}
        own = {n: t.detach().cpu() for n, t in own.items()}  # masks live on the CPU: average there
        others = [({n: t.cpu() for n, t in state.items()}, keep) for _, (state, keep) in sorted(task.relayed.items())]
        task.model.load_state_dict(neighbour_average(own, mask, others, opts.include_self))
        train(task.model, task.data.train, cfg, task.generator, mask=mask, epochs=task.local.epochs)
        new = readjust(task.model, mask, task.data.train, cfg.batch_size, rate, opts.regrow, task.generator,
                       opts.grad_batches)
        return ClientUpdate(clone_state(task.model), new, len(task.data.train[1]),
                            {"density": new.density(), "drop-rate": rate, "neighbours": float(len(others))})

    # ---- server half ----
    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Store each uploader's new sparse model for the relay; the round's holders' mean as "the global model"."""
        for r in replies:
            mask = self.masks[r.partition_id]
            self.models[r.partition_id] = {n: (t[mask[n]].clone() if n in mask else t.clone())
                                           for n, t in r.upload.state.items()}
        uploads = self.uploads(replies, weighted=False)
        self.global_state = masked_mean(self.global_state, uploads, self.setup.prunable)
