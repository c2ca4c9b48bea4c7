"""CELL (Seo et al. 2021): LotteryFL with a broadcast downlink and per-client adaptive thresholds
(ALGORITHMS.md section 5).

Downlink: the full global model, the same bytes for every client (metered per client as sent, and as one
broadcast per round in the `bytes_down_broadcast` column); each client applies the mask it holds.
Client, each round: if the validation accuracy of theta_g * m_k exceeds its own threshold zeta_k (a
success), zeta_k resets to `threshold`; if it has not yet pruned gamma_max of its weights, it prunes (by
the magnitude of the downloaded weights) up to the pruned fraction gamma_k <- min(gamma_k + gamma,
gamma_max) and rewinds the survivors to theta_0. On failure zeta_k <- alpha * zeta_k. Either way it then
trains E epochs under its mask and uploads the kept values (dense until it first prunes).
Server: every entry is the sample-weighted mean over the uploads that keep it ("masked_mean"), or a plain
sample-weighted FedAvg with pruned entries as zeros ("mean").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedlottery.aggregation import masked_mean, mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import MaskedParameters, magnitude_prune
from fedlottery.training import evaluate, train
from fedlottery.sparsity import Mask
from strategies.base import DENSITY_SLACK, ClientTask, ClientUpdate, FederatedStrategy, Reply


@dataclass
class CELLOptions:
    threshold: float = 0.5  # zeta's default, restored after every success
    alpha: float = 0.9  # zeta_k <- alpha * zeta_k after a failure (the paper's value is not public)
    gamma: float = 0.2  # pruned fraction added per success
    gamma_max: float = 0.8  # the most a client ever prunes
    aggregation: Literal["masked_mean", "mean"] = "masked_mean"
    weighted: bool = True  # CELL weights clients by sample count

    def validate(self, path: str) -> None:
        for key in ("threshold", "gamma", "gamma_max"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"{path}.{key}: must be in (0, 1), got {getattr(self, key)}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"{path}.alpha: must be in (0, 1], got {self.alpha}")


def cell_gate(memory: dict[str, float], acc: float, opts: CELLOptions) -> float | None:
    """Update a client's (zeta, gamma) memory for validation accuracy `acc`; return the pruned fraction to
    reach now, or None when the client does not prune this round."""
    zeta = memory.get("zeta", opts.threshold)
    gamma = memory.get("gamma", 0.0)
    if acc <= zeta:
        memory["zeta"] = opts.alpha * zeta
        return None
    memory["zeta"] = opts.threshold
    if gamma >= opts.gamma_max - 1e-12:
        return None
    memory["gamma"] = min(gamma + opts.gamma, opts.gamma_max)
    return memory["gamma"]


class CELLStrategy(FederatedStrategy):
    """CELL: broadcast downlink, per-client adaptive pruning threshold, sample-weighted aggregation."""

    name = "cell"
    options_cls = CELLOptions
    needs_validation = True  # the pruning gate is validation accuracy against the client's threshold
    broadcast = True
    metric_bounds = {"val-acc": (0.0, 1.0), "pruned": (0.0, 1.0), "density": (0.0, 1.0), "threshold": (0.0, 1.0)}

    def min_density(self, partition_id: int, sent: Mask) -> float:
        """A client never prunes more than gamma_max of its weights."""
        return 1.0 - self.options.gamma_max - DENSITY_SLACK

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: CELLOptions = task.options
        _, acc = evaluate(task.model, task.data.val)
        mask = task.mask
        target = cell_gate(task.memory, acc, opts)
        if target is not None:
            params = dict(task.model.named_parameters())
            density = 1.0 - target
            rate = 1.0 - density / mask.density() if mask.density() > 0 else 0.0
            mask = magnitude_prune(mask, {n: params[n] for n in mask}, min(max(rate, 0.0), 1.0),
                                   target_density=density)
            task.model.load_state_dict(task.theta0)
            MaskedParameters(task.model, mask)
        train(task.model, task.data.train, task.local.as_training(), task.generator, mask=mask,
              epochs=task.local.epochs)
        return ClientUpdate(
            clone_state(task.model), mask, len(task.data.train[1]),
            {"val-acc": float(acc), "pruned": float(target is not None), "density": mask.density(),
             "threshold": task.memory["zeta"]},
        )

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        if self.options.aggregation == "mean":
            self.global_state = mean(self.global_state, uploads)
        else:
            self.global_state = masked_mean(self.global_state, uploads, self.setup.prunable)
