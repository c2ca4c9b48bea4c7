"""FedRep (Collins et al., ICML 2021, arXiv 2102.07078): a shared representation, a personal head.

Client, each round (E = local.epochs): with the received body frozen, train its own head for
E − body_epochs epochs; then, with that head frozen, train the body for body_epochs epochs (the authors' code
splits the local epochs this way, E_body = 1 in their scripts); upload the body. The head is personal as in
FedPer (never sent, kept in the client's state). Server: the sample-weighted mean of the bodies. Evaluated as
each client's own head on the current global body. Each phase has its own optimizer (fresh momentum), as the two
phases optimise disjoint parameters. BatchNorm running statistics in the body still move during the head phase
(train mode; only parameters are frozen).
"""
from __future__ import annotations

from dataclasses import dataclass

from fedlottery.errors import ConfigError
from fedlottery.models import clone_state, head_names
from fedlottery.training import frozen, train
from strategies.base import ClientTask, ClientUpdate, ServerSetup
from strategies.fedper import FedPerStrategy


@dataclass
class FedRepOptions:
    body_epochs: int = 1  # E_body: the last epochs of each round, spent on the body (the rest on the head)
    weighted: bool = True  # weight clients by their number of training samples (False: plain mean)

    def validate(self, path: str) -> None:
        if self.body_epochs < 1:
            raise ConfigError(f"{path}.body_epochs: must be >= 1 (the body must train), got {self.body_epochs}")


def head_epochs(local_epochs: int, body_epochs: int) -> int:
    """E − E_body, or a ConfigError naming both settings when that leaves the head no epoch."""
    if local_epochs <= body_epochs:
        raise ConfigError(f"fedrep: local.epochs = {local_epochs} leaves no epoch for the head after "
                         f"strategy_options.fedrep.body_epochs = {body_epochs}; raise local.epochs or lower body_epochs")
    return local_epochs - body_epochs


class FedRepStrategy(FedPerStrategy):
    """Head first (body frozen), then body (head frozen); bodies averaged, heads kept."""

    name = "fedrep"
    options_cls = FedRepOptions

    def __init__(self, setup: ServerSetup, options: FedRepOptions | None = None):
        super().__init__(setup, options)
        head_epochs(setup.local.epochs, self.options.body_epochs)  # refuse at start, not in every client

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        model, cfg = task.model, task.local.as_training()
        params = {n for n, _ in model.named_parameters()}
        head = [n for n in head_names(model) if n in params]
        body = [n for n in params if n not in head]
        with frozen(model, body):
            train(model, task.data.train, cfg, task.generator,
                  epochs=head_epochs(task.local.epochs, task.options.body_epochs))
        with frozen(model, head):
            train(model, task.data.train, cfg, task.generator, epochs=task.options.body_epochs)
        return ClientUpdate(clone_state(model), task.mask, len(task.data.train[1]))
