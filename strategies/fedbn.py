"""FedBN (Li et al., ICLR 2021): FedAvg in which every BatchNorm layer stays local.

Client, each round: load theta_g with its own BatchNorm tensors, train E epochs. Every BatchNorm tensor
(weight, bias, running mean and variance, num_batches_tracked) is personal: never sent either way, never
overwritten by the server; each client keeps its own in its client state across rounds (a fresh client starts
from theta_0's). Server: the sample-weighted mean of every other tensor (`weighted: false`: a plain mean).
With a model without BatchNorm this is exactly FedAvg.
"""
from __future__ import annotations

from typing import Any

from fedlottery.aggregation import mean
from strategies.base import Reply
from strategies.fedavg import FedAvgOptions, FedAvgStrategy

FedBNOptions = FedAvgOptions  # weighted: weight clients by their training samples (False: plain mean)


class FedBNStrategy(FedAvgStrategy):
    """FedAvg with personal BatchNorm (weights, biases and running statistics stay on each client)."""

    name = "fedbn"
    options_cls = FedBNOptions

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        return frozenset(batchnorm)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        shared = [n for n in self.global_state if n not in self.personal]
        self.global_state = mean(self.global_state, uploads, shared)  # BatchNorm entries: untouched, bit for bit
