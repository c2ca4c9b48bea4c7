"""Local training only: each client trains its own model alone and nothing is ever aggregated.

The floor any federated method must clear. Every tensor is personal: each client starts from theta_0, trains E
epochs whenever it is sampled (the same sampling, local training and evaluation schedule as every other
strategy, so the compute matches), and keeps its model in its client state across rounds. No model travels
either way; a real local-only deployment would not send even the control messages the simulation uses to tell
a client to train, so `communicates = False` and the run's meter reports 0 bytes. Evaluation tests each
client's own model (the ClientApp loads the personal tensors the client holds); θ_g stays theta_0.
"""
from __future__ import annotations

from typing import Any

from fedlottery.models import clone_state
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, NoOptions, Reply


class LocalStrategy(FederatedStrategy):
    """Every client trains alone; the server only schedules (and measures) them."""

    name = "local"
    options_cls = NoOptions
    communicates = False

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        raise RuntimeError("strategy 'local' keeps every tensor on the client, so this ClientApp must ask "
                           "FederatedStrategy.personal_tensors (every tensor name), not personal_names")

    @classmethod
    def personal_tensors(cls, options: Any, names: list[str], prunable: list[str], batchnorm: list[str]
                         ) -> frozenset[str]:
        return frozenset(names)

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        # task.model holds theta_0 the first time, then the weights this client kept from its last round
        train(task.model, task.data.train, task.local.as_training(), task.generator, epochs=task.local.epochs)
        return ClientUpdate(clone_state(task.model), task.mask, len(task.data.train[1]))

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """Nothing to aggregate: the replies carry no model (θ_g stays theta_0)."""
