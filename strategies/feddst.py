"""FedDST (Bibikar et al., AAAI 2022, arXiv 2112.09824): federated dynamic sparse training around one global mask
(ALGORITHMS.md section 9).

Round 1 starts from one global mask at density d = 1 - S: each layer's budget from ERK (or uniform) layer
densities, filled with the largest-|theta_0| entries of that layer (a layer-wise magnitude prune of the random
initialisation). Both halves derive it from theta_0, so it costs no bytes. Clients train masked weights.

Readjustment rounds are those with (r - 1) % r_adj == 0, at rate alpha_t = alpha * (1 + cos(pi * t / T_end)) / 2,
t = r, T_end = rounds / 2 (the rate is 0 from T_end on, so readjustment stops there). In such a round a client
trains E - 1 epochs, then prunes each layer by magnitude to S + (1 - S) * alpha_t sparsity (drops alpha_t of its
kept weights) and regrows back to S by the largest |gradient| at the free positions (regrown weights start at 0),
and trains its last epoch under that mask; it uploads weights and mask. Choice: the spec says "in its last local
epoch"; readjusting at that epoch's start lets the regrown weights train for one epoch before the upload (had they
gone up as zeros, the server's magnitude re-prune would discard them at once).

Server: every prunable entry is sum_k n_k w_k m_k / sum_k n_k m_k over the clients holding it (biases and other
tensors: the plain n_k-weighted mean); the new global mask is the union of the uploaded masks, re-pruned per
layer by magnitude of the aggregate to the layer's budget (so the density is exactly d again, and the global
model is zero outside it). Evaluation: the global model under the global mask, on each client's test set.

Defaults: density 0.2 (S = 0.8), ERK, alpha 0.5, r_adj 10, from my reading of the authors' code's defaults (the
spec names none). Not followed: the code samples clients with replacement (the sampler here does not), and its
regrowth ranks all indices, active ones included, zeroing the chosen ones (the spec's quirk); here regrowth ranks
only the free positions, as the paper describes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedlottery.aggregation import masked_mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask, layer_counts, top_magnitude_mask
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply, ServerSetup
from strategies.dst import AnnealedDSTStrategy, Regrow, check_unit, readjust


@dataclass
class FedDSTOptions:
    density: float = 0.2  # 1 - S, the global mask's fixed density
    distribution: Literal["erk", "uniform"] = "erk"  # layer budgets of the initial (and every later) mask
    alpha: float = 0.5  # the readjustment rate at t = 0, cosine-annealed to 0 at t_end
    r_adj: int = 10  # rounds between readjustments: rounds r with (r - 1) % r_adj == 0
    t_end: int | None = None  # the round the rate reaches 0; None: half the run's rounds (the paper)
    regrow: Regrow = "gradient"  # "random": regrow at random free positions (an ablation, not the paper)
    grad_batches: int = 1  # batches whose loss gradient scores regrowth
    weighted: bool = True  # n_k-weighted aggregation (the paper); False: every client alike

    def validate(self, path: str) -> None:
        check_unit(path, density=self.density, alpha=self.alpha)
        if self.r_adj < 1 or self.grad_batches < 1 or (self.t_end is not None and self.t_end < 1):
            raise ConfigError(f"{path}: r_adj, grad_batches and t_end must be >= 1")


def global_start_mask(options: FedDSTOptions, theta0: dict[str, torch.Tensor], prunable: list[str]) -> Mask:
    """The round-1 global mask: each layer's ERK/uniform budget filled by the largest |theta_0| entries."""
    counts = layer_counts({n: theta0[n].shape for n in prunable}, options.density, options.distribution)
    return top_magnitude_mask({n: theta0[n] for n in prunable}, counts)


class FedDSTStrategy(AnnealedDSTStrategy):
    """FedDST: one global sparse mask; clients readjust it now and then; the server re-prunes the union."""

    horizon_fraction = 0.5  # T_end = rounds / 2 (the paper)

    name = "feddst"
    options_cls = FedDSTOptions
    regrows = True  # a readjusting client moves weights within the mask's budget
    state_fields = FederatedStrategy.state_fields + ("global_mask",)
    rebuilt_fields = FederatedStrategy.rebuilt_fields | {"budget"}
    metric_bounds = {"density": (0.0, 1.0), "readjusted": (0.0, 1.0)}

    @classmethod
    def initial_mask(cls, options: Any, seed: int, partition_id: int, theta0: dict[str, torch.Tensor],
                     prunable: list[str]) -> Mask:
        return global_start_mask(options, theta0, prunable)

    def __init__(self, setup: ServerSetup, options: Any = None):
        super().__init__(setup, options)
        self.global_mask = self.masks[next(iter(setup.node_of))]
        self.budget = self.global_mask.kept_per_layer()

    def initial_masks(self) -> dict[int, Mask]:
        mask = global_start_mask(self.options, self.setup.theta0, list(self.setup.prunable))
        return {pid: mask for pid in self.setup.node_of}

    def rate(self, server_round: int) -> float:
        """alpha_t in a readjustment round, else 0."""
        if (server_round - 1) % self.options.r_adj:
            return 0.0
        return super().rate(server_round)

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FedDSTOptions = task.options
        rate, cfg, epochs = float(task.instructions["rate"]), task.local.as_training(), task.local.epochs
        mask = task.mask
        if rate > 0:
            if epochs > 1:
                train(task.model, task.data.train, cfg, task.generator, mask=mask, epochs=epochs - 1)
            mask = readjust(task.model, mask, task.data.train, cfg.batch_size, rate, opts.regrow, task.generator,
                            opts.grad_batches)
            epochs = 1
        train(task.model, task.data.train, cfg, task.generator, mask=mask, epochs=epochs)
        return ClientUpdate(clone_state(task.model), mask, len(task.data.train[1]),
                            {"density": mask.density(), "readjusted": float(rate > 0)})

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        averaged = masked_mean(self.global_state, uploads, self.setup.prunable)
        union = Mask({n: torch.zeros_like(self.global_mask[n]) for n in self.global_mask})
        for upload in uploads:
            held = upload.mask if upload.mask is not None else Mask.ones(self.shapes)
            union = Mask({n: union[n] | held[n] for n in union})
        self.global_mask = top_magnitude_mask({n: averaged[n] for n in union}, self.budget, within=union)
        self.global_state = {n: (t * self.global_mask[n].to(t.dtype) if n in self.global_mask else t)
                             for n, t in averaged.items()}
        self.masks.assign(list(self.setup.node_of), self.global_mask)

    def global_model_state(self) -> dict[str, torch.Tensor]:
        return self.global_state
