"""FedSelect (Tamirisa et al., CVPR 2024): a lottery-ticket-style mask that marks each client's *personal*
weights, grown step by step; every other weight is shared and aggregated.

LotteryFL's mask says which weights a client keeps (the rest are zero); here the client's mask m_k says which
weights are *shared*: the rest are its own, kept on the client and never sent. So the whole mask machinery
carries it unchanged: the server sends theta_g * m_k and the mask news, the client fills the entries outside
m_k from its own last trained weights (`personal_entries`), and uploads only the entries under m_k.

Client, each round: load theta_g on the shared entries and its own values on the personal ones (plus its own
BatchNorm, `personal_bn`), train every weight E epochs; then move the `grow_rate` fraction of each layer's
still-shared weights that changed most in this round's training (|w_after - w_before|, the paper's
selection criterion) to the personal set, until `max_personal` of the prunable weights are personal.
Server: LotteryFL's masked mean: each shared entry is the mean over the clients that share it (an entry
every uploader holds personally keeps its value); biases and other non-prunable tensors: the plain mean.

Differences from the paper, on purpose: all weights train jointly for E epochs (the paper alternates passes
over personal and shared weights, doubling the compute; joint training keeps every method here at the same
local cost), and the personal set grows at every participation (the paper: every few rounds, with all
clients taking part every round, which 20 of 400 do not here). In the tables "density" is the shared
fraction: the share of the model that travels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedlottery.aggregation import masked_mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask, magnitude_prune
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply, one_step_floor


@dataclass
class FedSelectOptions:
    grow_rate: float = 0.2  # of each layer's still-shared weights that turn personal per participation
    max_personal: float = 0.9  # growth stops when this fraction of the prunable weights is personal
    personal_bn: bool = True  # BatchNorm parameters and running statistics stay on each client
    weighted: bool = False  # weight the masked mean by client sample counts

    def validate(self, path: str) -> None:
        for key in ("grow_rate", "max_personal"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"{path}.{key}: must be in (0, 1), got {getattr(self, key)}")


def grow_personal(shared: Mask, change: dict[str, torch.Tensor], rate: float, max_personal: float) -> Mask:
    """The shared mask after moving `rate` of each layer's shared entries with the largest |change| out of it
    (to the personal set), never below a shared density of 1 - max_personal."""
    # magnitude_prune removes the smallest scores; 1 / (1 + |change|) puts the largest changes first
    largest_change_first = {n: 1.0 / (1.0 + change[n].detach().abs().double()) for n in shared}
    return magnitude_prune(shared, largest_change_first, rate, target_density=1.0 - max_personal)


class FedSelectStrategy(FederatedStrategy):
    """FedSelect: personal weights chosen by how much local training moves them; the rest federated."""

    name = "fedselect"
    options_cls = FedSelectOptions
    personal_entries = True  # entries outside a client's mask are its own weights, not zero
    metric_bounds = {"density": (0.0, 1.0)}

    def min_density(self, partition_id: int, sent: Mask) -> float:
        """One growth step per round, clamped at the shared floor."""
        return one_step_floor(sent, self.options.grow_rate, 1 - self.options.max_personal)

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        return frozenset(batchnorm) if options.personal_bn else frozenset()

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FedSelectOptions = task.options
        before = {n: t.detach().clone() for n, t in task.model.state_dict().items() if n in task.mask}
        train(task.model, task.data.train, task.local.as_training(), task.generator, epochs=task.local.epochs)
        state = clone_state(task.model)  # every entry: the shared ones go up, the personal ones stay home
        change = {n: state[n] - before[n] for n in task.mask}
        shared = grow_personal(task.mask, change, opts.grow_rate, opts.max_personal)
        return ClientUpdate(state, shared, len(task.data.train[1]), {"density": shared.density()})

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        averaged = masked_mean(self.global_state, uploads, self.setup.prunable)
        self.global_state = {n: (t if n in self.personal else averaged[n]) for n, t in self.global_state.items()}
