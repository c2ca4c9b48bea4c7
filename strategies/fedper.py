"""FedPer (Arivazhagan et al. 2019, arXiv 1912.00818): FedAvg with personal final layers.

Client, each round: load the received body with its own head, train the whole model E epochs. Server: the
sample-weighted mean of the body only (`weighted: false`: a plain mean). The head (fedlottery.models.head_names:
the last nn.Linear, or what the model declares in `head_modules`; the paper's K_P personal layers) is personal:
never sent either way, never overwritten by the server, kept in each client's state across rounds (a fresh
client starts from theta_0's). Evaluated as each client's own head on the current global body.
"""
from __future__ import annotations

from fedlottery.aggregation import mean
from strategies.base import Reply
from strategies.fedavg import FedAvgOptions, FedAvgStrategy

FedPerOptions = FedAvgOptions  # weighted: weight clients by their training samples (False: plain mean)


class FedPerStrategy(FedAvgStrategy):
    """FedAvg on the body; every client trains and keeps its own head."""

    name = "fedper"
    options_cls = FedPerOptions
    keeps_head = True

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        """The mean of the body only: the head entries of global_state stay theta_0's, bit for bit (the uploads
        carry none; the reply check fills them in from global_state)."""
        uploads = self.uploads(replies, self.options.weighted)
        body = [n for n in self.global_state if n not in self.personal]
        self.global_state = mean(self.global_state, uploads, body)
