"""Supermasks (Zhou et al. 2019; the local rule of FedPM, Isik et al. 2023): learning which of a network's
frozen initial weights to keep, without ever changing a weight.

Every prunable weight has a score s and a keep probability sigmoid(s). Each forward pass draws a fresh mask
m ~ Bernoulli(sigmoid(s)) and uses theta_0 * m; the gradient passes straight through the draw (dm/dtheta = 1,
or theta for `ste: scaled`, the FedPM authors' code). One rule, two users, so both train exactly the same
thing: FedPM's clients (strategies/fedpm.py, E local epochs from the server's probabilities) and the supermask
run of `fedlottery imp` (fedlottery/imp.py, centrally from seeded scores).
"""
from __future__ import annotations

import copy
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedlottery.sparsity import Mask

Batch = tuple[torch.Tensor, torch.Tensor]


def sample_mask(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli(probs) draw from `generator` (a CPU generator; the draw moves to probs' device)."""
    return torch.rand(probs.shape, generator=generator).to(probs.device) < probs


def shuffled_batches(data: Batch, batch_size: int, generator: torch.Generator, *, epochs: int | None = None,
                     steps: int | None = None) -> Iterator[Batch]:
    """Mini-batches of a fresh permutation per pass, for `epochs` whole passes or `steps` batches. Lazy: each
    permutation is drawn from `generator` only when its pass starts, so the stream is shared with the mask
    draws in a fixed order."""
    x, y = data
    done, passes = 0, 0
    while (epochs is None or passes < epochs) and (steps is None or done < steps):
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for start in range(0, len(y), batch_size):
            if steps is not None and done >= steps:
                return
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
            done += 1
        passes += 1


def initial_probabilities(shapes: dict[str, torch.Size], init: str, generator: torch.Generator
                          ) -> dict[str, torch.Tensor]:
    """First keep probabilities: sigmoid(N(0, 1)) drawn from `generator` name by name ("normal", the FedPM
    authors' code), or 0.5 everywhere ("half")."""
    return {n: torch.sigmoid(torch.randn(shape, generator=generator)) if init == "normal"
            else torch.full(shape, 0.5) for n, shape in shapes.items()}


def make_scores(probs: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """Trainable scores logit(p), with p clipped into [clip, 1 - clip] so every score is finite."""
    return {n: torch.logit(p.float().clamp(clip, 1 - clip)).detach().requires_grad_(True) for n, p in probs.items()}


def train_scores(model: nn.Module, weights: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer, batches: Iterable[Batch], generator: torch.Generator,
                 ste: str = "identity", on_step=None) -> None:
    """Train `scores` (one per name in `weights`) on `batches`; the model's own parameters are frozen and its
    prunable slots are bypassed (functional_call with theta_0 * m), so only BatchNorm statistics move.
    `on_step(step)` runs after every optimizer step (e.g. validation for early stopping)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    for step, (x, y) in enumerate(batches, start=1):
        effective = {}
        for n, w in weights.items():
            prob = torch.sigmoid(scores[n])
            sample = sample_mask(prob.detach(), generator).to(prob.dtype)
            slope = prob.detach() if ste == "scaled" else 1.0
            effective[n] = w * (sample + slope * (prob - prob.detach()))  # forward: theta_0 * m
        loss = F.cross_entropy(functional_call(model, effective, (x,)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step)


def keep_probabilities(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.sigmoid(s).detach() for n, s in scores.items()}


def score_optimizer(scores: dict[str, torch.Tensor], name: str, lr: float, momentum: float
                    ) -> torch.optim.Optimizer:
    """Adam (FedPM's default) or SGD with `momentum` over the scores alone."""
    if name == "adam":
        return torch.optim.Adam(list(scores.values()), lr=lr)
    return torch.optim.SGD(list(scores.values()), lr=lr, momentum=momentum)


def thresholded(model: nn.Module, theta0: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]
                ) -> tuple[Mask, nn.Module]:
    """The deterministic supermask sigmoid(s) > 0.5, and theta_0 under it in a copy of `model` (which keeps
    the BatchNorm statistics the sampled masks left in it)."""
    kept = Mask({n: torch.sigmoid(s).detach().cpu() > 0.5 for n, s in scores.items()})
    frozen = copy.deepcopy(model)
    frozen.load_state_dict({n: theta0[n] * kept[n].to(theta0[n]) for n in scores}, strict=False)
    return kept, frozen
