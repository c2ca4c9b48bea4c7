"""FedLTN (Mugunthan et al., ECCV 2022): LotteryFL with post-pruning, personal batch-norm and server momentum
(ALGORITHMS.md section 3; no public code, so the unstated details are options with documented defaults).

Client, each round: load theta_g * m_k with its own BatchNorm tensors, train E epochs under m_k; then, if
the trained model's validation accuracy > acc_threshold and density > target_density, prune prune_rate of
each layer's remaining weights by the magnitude of the *trained* weights. Survivors keep their trained
values (no rewinding). BatchNorm weights and statistics never leave the client (`personal_bn`).
Server: delta = masked mean over holders of (client weights - theta_g); v <- beta * v + delta;
theta_g <- theta_g + server_lr * v (beta = 0 and server_lr = 1 give LotteryFL's masked mean).
Jump-start: every client starts from a saved ticket (a mask file from `fedlottery imp`, optionally weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlottery.aggregation import masked_mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask, magnitude_prune
from fedlottery.training import evaluate, train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply, ServerSetup, one_step_floor


@dataclass
class FedLTNOptions:
    acc_threshold: float = 0.5
    prune_rate: float = 0.2  # of each layer's remaining weights per pruning round
    target_density: float = 0.1
    personal_bn: bool = True  # BatchNorm parameters and running statistics stay on each client
    server_momentum: float = 0.9  # beta (FedAvgM's usual value; the paper does not give one)
    server_lr: float = 1.0  # eta_s
    weighted: bool = False  # weight the masked mean by client sample counts
    jump_start: str | None = None  # a mask file (Mask.save / `fedlottery imp` masks/*.npz) every client starts from
    jump_start_weights: str | None = None  # optional torch state-dict file: the ticket's weights

    def validate(self, path: str) -> None:
        for key in ("prune_rate", "target_density"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"{path}.{key}: must be in (0, 1), got {getattr(self, key)}")
        if not 0 <= self.acc_threshold < 1:
            raise ConfigError(f"{path}.acc_threshold: must be in [0, 1), got {self.acc_threshold}")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"{path}.server_momentum: must be in [0, 1), got {self.server_momentum}")
        if self.server_lr <= 0:
            raise ConfigError(f"{path}.server_lr: must be > 0, got {self.server_lr}")
        if self.jump_start_weights is not None and self.jump_start is None:
            raise ConfigError(f"{path}.jump_start_weights: needs jump_start (the ticket's mask)")
        # The files are read by the server only (clients, possibly elsewhere, never open them): see _jump_start.


class FedLTNStrategy(FederatedStrategy):
    """FedLTN: post-pruning without rewinding, personal BatchNorm, server momentum."""

    name = "fedltn"
    options_cls = FedLTNOptions
    state_fields = FederatedStrategy.state_fields + ("velocity",)
    needs_validation = True  # the pruning gate is the trained model's validation accuracy
    metric_bounds = {"val-acc": (0.0, 1.0), "pruned": (0.0, 1.0), "density": (0.0, 1.0)}

    def min_density(self, partition_id: int, sent: Mask) -> float:
        """One pruning step per round, clamped at the target."""
        return one_step_floor(sent, self.options.prune_rate, self.options.target_density)

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        return frozenset(batchnorm) if options.personal_bn else frozenset()

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FedLTNOptions = task.options
        train(task.model, task.data.train, task.local.as_training(), task.generator, mask=task.mask,
              epochs=task.local.epochs)
        _, acc = evaluate(task.model, task.data.val)
        mask = task.mask
        if acc > opts.acc_threshold and mask.density() > opts.target_density:
            params = dict(task.model.named_parameters())
            mask = magnitude_prune(mask, {n: params[n] for n in mask}, opts.prune_rate,
                                   target_density=opts.target_density)
        state = clone_state(task.model)
        mask.apply_(state)  # no rewinding: survivors keep their trained values
        return ClientUpdate(state, mask, len(task.data.train[1]),
                            {"val-acc": float(acc), "pruned": float(mask != task.mask), "density": mask.density()})

    def __init__(self, setup: ServerSetup, options: Any = None):
        super().__init__(setup, options)
        self.velocity = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in self.global_state.items()
                         if t.is_floating_point() and n not in self.personal}
        if self.options.jump_start:
            self._jump_start()

    def _jump_start(self) -> None:
        for path in (self.options.jump_start, self.options.jump_start_weights):
            if path is not None and not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"strategy_options.fedltn: jump-start file not found: {path}")
        ticket = Mask.load(Path(self.options.jump_start).expanduser())
        if sorted(ticket.names()) != sorted(self.shapes) or any(
            tuple(ticket[n].shape) != tuple(self.shapes[n]) for n in self.shapes
        ):
            raise ValueError(f"jump-start mask {self.options.jump_start} does not fit this model's prunable tensors")
        ticket = Mask({n: ticket[n] for n in self.shapes})
        if self.options.jump_start_weights:
            weights = torch.load(Path(self.options.jump_start_weights).expanduser(), map_location="cpu")
            missing = sorted(set(self.global_state) - set(weights))
            if missing:
                raise ValueError(f"jump-start weights lack {missing[:5]}")
            self.global_state = {n: weights[n].to(t.dtype).clone() for n, t in self.global_state.items()}
        self.masks.assign(list(self.masks), ticket)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        averaged = masked_mean(self.global_state, uploads, self.setup.prunable)
        beta, lr = self.options.server_momentum, self.options.server_lr
        for name, v in self.velocity.items():
            v.mul_(beta).add_(averaged[name].float() - self.global_state[name].float())
            self.global_state[name] = (self.global_state[name].float() + lr * v).to(self.global_state[name].dtype)
        for name, t in averaged.items():
            if name not in self.velocity and name not in self.personal:
                self.global_state[name] = t
