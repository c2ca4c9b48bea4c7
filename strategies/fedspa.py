"""FedSpa (Huang et al. 2022, arXiv 2201.11380, "Achieving personalized federated learning with sparse local
models"): personalised sparse masks at one fixed density, found by dynamic sparse training on the clients
(ALGORITHMS.md section 9).

Every client k starts from its own random mask m_k at density d (ERK or uniform layer budgets), drawn from a
stream seeded by (seed, partition) alone, so server and client derive the same mask and nothing is sent for it.
Round t, client k: receives theta_g * m_k, trains E epochs with pruned weights held at zero, then drops
alpha_t = alpha * (1 + cos(pi * t / T)) / 2 of each layer's kept weights by magnitude and regrows as many at the
free positions with the largest |gradient| (regrown weights start at zero), keeping its density exactly d; it
uploads its sparse weights and the mask change. Server: every prunable entry is the mean over the round's
clients whose mask keeps it (`aggregation: holders`; an entry nobody held keeps its value); other tensors the
plain mean. Each client is sent only its own subnetwork. Evaluation: theta_g * m_k on client k's test set (its
own trained weights too with `evaluation.deployed`).

Followed from the paper as I understand it: personalised masks at a fixed density from round 1, magnitude drop
and gradient regrowth on the client, a cosine-annealed drop rate over the whole run (T = rounds), the server
aggregating sparse models and returning each client its own subnetwork. Chosen here (not checked against the
paper's text in this session): the drop-and-regrow step after local training rather than before it; the mean
over holders (`aggregation: mean`, the plain mean with pruned entries as zeros, is the other reading of the
paper's aggregation formula); unweighted clients; density 0.5 and alpha 0.5 as defaults (the values of the
DisPFL code base FedSpa shares its schedule with).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedlottery.aggregation import masked_mean, mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, Reply
from strategies.dst import AnnealedDSTStrategy, Regrow, check_unit, random_client_mask, readjust


@dataclass
class FedSpaOptions:
    density: float = 0.5  # every client's fixed mask density
    distribution: Literal["erk", "uniform"] = "erk"  # layer budgets of the random initial masks
    alpha: float = 0.5  # the drop rate at round 0, cosine-annealed to 0 at t_end
    t_end: int | None = None  # None: the run's total rounds
    regrow: Regrow = "gradient"  # "random": regrow at random free positions
    grad_batches: int = 1  # batches whose loss gradient scores regrowth
    aggregation: Literal["holders", "mean"] = "holders"  # mean over holders, or the plain mean with zeros
    weighted: bool = False  # weight clients by sample count

    def validate(self, path: str) -> None:
        check_unit(path, density=self.density, alpha=self.alpha)
        if self.grad_batches < 1 or (self.t_end is not None and self.t_end < 1):
            raise ConfigError(f"{path}: grad_batches and t_end must be >= 1")


class FedSpaStrategy(AnnealedDSTStrategy):
    """FedSpa: a personalised sparse mask per client, evolved by DST on the client; masked mean on the server."""

    name = "fedspa"
    options_cls = FedSpaOptions
    regrows = True  # drop-and-regrow moves weights within the budget of the mask sent
    metric_bounds = {"density": (0.0, 1.0), "drop-rate": (0.0, 1.0)}

    @classmethod
    def initial_mask(cls, options: Any, seed: int, partition_id: int, theta0: dict[str, torch.Tensor],
                     prunable: list[str]) -> Mask:
        shapes = {n: theta0[n].shape for n in prunable}
        return random_client_mask(shapes, options.density, options.distribution, seed, partition_id, cls.name)

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FedSpaOptions = task.options
        rate, cfg = float(task.instructions["rate"]), task.local.as_training()
        train(task.model, task.data.train, cfg, task.generator, mask=task.mask, epochs=task.local.epochs)
        mask = readjust(task.model, task.mask, task.data.train, cfg.batch_size, rate, opts.regrow, task.generator,
                        opts.grad_batches)
        return ClientUpdate(clone_state(task.model), mask, len(task.data.train[1]),
                            {"density": mask.density(), "drop-rate": rate})

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        if self.options.aggregation == "mean":
            self.global_state = mean(self.global_state, uploads)
        else:
            self.global_state = masked_mean(self.global_state, uploads, self.setup.prunable)
