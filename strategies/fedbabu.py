"""FedBABU (Oh et al., ICLR 2022, arXiv 2106.06042): train and share only the body; the head stays at theta_0.

Client, each round: load the received body and theta_0's head, train E epochs with the head frozen (no gradient,
no weight decay, no momentum reaches it). Server: the sample-weighted mean of the bodies. The head is never trained
during federated training, so it never needs sending: it is personal like FedPer's (never on the wire), and every
client's copy simply stays theta_0's. Personalisation is fine-tuning at evaluation: FedBABU's reported number is
the `finetuned-acc` column (`evaluation.finetune_epochs` > 0), a copy of (global body, theta_0 head) trained on the
client's training split for that many epochs with every parameter, head included, trainable (the paper's main
results fine-tune the whole network). `test-acc` is the un-tuned model (random head): not FedBABU's number.
"""
from __future__ import annotations

from fedlottery.models import clone_state, head_names
from fedlottery.training import frozen, train
from strategies.base import ClientTask, ClientUpdate
from strategies.fedper import FedPerOptions, FedPerStrategy

FedBABUOptions = FedPerOptions  # weighted: weight clients by their training samples (False: plain mean)


class FedBABUStrategy(FedPerStrategy):
    """The body alone learns and is averaged; the head is theta_0's until fine-tuning at evaluation."""

    name = "fedbabu"
    options_cls = FedBABUOptions

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        params = {n for n, _ in task.model.named_parameters()}
        with frozen(task.model, [n for n in head_names(task.model) if n in params]):
            train(task.model, task.data.train, task.local.as_training(), task.generator, epochs=task.local.epochs)
        return ClientUpdate(clone_state(task.model), task.mask, len(task.data.train[1]))
