"""FedAvg (McMahan et al. 2017): the dense baseline. Clients train the global model; the server takes
the mean weighted by local sample counts."""
from __future__ import annotations

from dataclasses import dataclass

from fedlottery.aggregation import mean
from fedlottery.models import clone_state
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply


@dataclass
class FedAvgOptions:
    weighted: bool = True  # weight clients by their number of training samples (False: plain mean)


class FedAvgStrategy(FederatedStrategy):
    """Dense FedAvg: local training, sample-weighted mean."""

    name = "fedavg"
    options_cls = FedAvgOptions

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        train(task.model, task.data.train, task.local.as_training(), task.generator, epochs=task.local.epochs)
        return ClientUpdate(clone_state(task.model), task.mask, len(task.data.train[1]))

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        self.global_state = mean(self.global_state, uploads)
