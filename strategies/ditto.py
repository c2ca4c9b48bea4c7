"""Ditto (Li et al., ICML 2021, arXiv 2012.04221): FedAvg for the global model, plus a personal model per client.

Client, each round it is sampled: (1) FedAvg's local update of the received global model w^t, with fedavg's
batches for that (seed, round, client) (client streams name no strategy, fedlottery.schedule): that trained w is
what goes up, bit for bit fedavg's upload in the same run, so Ditto's global model is fedavg's; (2) its personal model v_k, trained
`personal_epochs` epochs (default local.epochs) on f_k(v) + lam/2·||v − w^t||², anchored at the w^t it received
(not the w it just trained). v_k lives only in the client's state (`ClientUpdate.keep`), never on the wire, and
is what the client evaluates (`evaluation_state`): the personalised accuracy column. The paper leaves v_k's start
open; here a client's v_k starts as the first global model it trains from, so a client never sampled yet is
evaluated on the current global model. Server: FedAvg's sample-weighted mean. The paper tunes lam per data set
(roughly 0.05 to 2); lam = 0 makes v_k plain local training continued across rounds, a large lam pins v_k to w^t.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.training import proximal_term, train
from strategies.base import ClientTask, ClientUpdate
from strategies.fedavg import FedAvgStrategy


@dataclass
class DittoOptions:
    lam: float = 0.1  # λ of the pull of v_k towards w^t (the paper tunes it per data set, ~0.05 to 2)
    personal_epochs: int | None = None  # local epochs of v_k per round (None: local.epochs, as for w)
    weighted: bool = True  # FedAvg's mean weighted by training samples (False: plain mean)

    def validate(self, path: str) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"{path}.lam: must be a finite number >= 0 (0: no pull towards the global model), "
                              f"got {self.lam}")
        if self.personal_epochs is not None and self.personal_epochs < 1:
            raise ConfigError(f"{path}.personal_epochs: must be >= 1, or null for local.epochs; "
                              f"got {self.personal_epochs}")


class DittoStrategy(FedAvgStrategy):
    """FedAvg as sent; each client's own lam-regularised model v_k is what it is evaluated on."""

    name = "ditto"
    options_cls = DittoOptions

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        received = clone_state(task.model)  # w^t
        personal = copy.deepcopy(task.model)
        personal.load_state_dict(task.kept or received)
        update = FedAvgStrategy.client_train(task)  # w's update first, so its batches are FedAvg's own
        update.keep = cls.personal_update(personal, received, task)
        return update

    @classmethod
    def personal_update(cls, personal: torch.nn.Module, received: dict[str, torch.Tensor], task: ClientTask
                        ) -> dict[str, torch.Tensor]:
        """v_k after `personal_epochs` epochs on f_k(v) + lam/2·||v − w^t||² (batches from the task's generator,
        drawn after w's); returned as the state the client keeps."""
        lam = task.options.lam
        pull = proximal_term(personal, received, lam) if lam else None
        epochs = task.options.personal_epochs or task.local.epochs
        train(personal, task.data.train, task.local.as_training(), task.generator, epochs=epochs, extra_loss=pull)
        return clone_state(personal)

    @classmethod
    def evaluation_state(cls, options: Any, received: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        """v_k, once the client has one; before its first round, the global model it was sent."""
        return kept or received
