"""FLASH (Babakniya et al., TMLR 2023): one sparse mask for everyone, found by sparsity hunting
(ALGORITHMS.md section 4). Three strategies share the machinery here:

- Round 1 is stage 1, sparsity hunting: ceil(hunt_fraction * N) clients (round 1's scheduled clients, cut
  down or topped up to that number: `_Flash.sample`) get the same random mask at the target density, run
  dynamic sparse training (prune-and-regrow) for hunt_epochs and report only their per-layer densities (all
  the server uses). The server rescales the mean layer densities to the target, draws a fresh random mask per
  layer at those counts and restarts from theta_0 under it.
- `flash-spdst`: that server mask stays fixed; clients train masked weights.
- `flash-jmwst`: every mask_interval rounds, clients also run prune-and-regrow from the server mask and
  upload weights and their mask changes; the server averages, then keeps the top-|w| entries of the
  aggregate per layer, with layer budgets from the clients' mean layer densities rescaled to the target.
- `hetero-flash`: clients are assigned density levels (fractions of the target); the server derives one
  nested mask per level (top-|w| of the aggregate inside the next denser level's mask) every
  mask_interval rounds and sends each client the mask of its level.

Local training uses the round's learning rate lr * (lr_final / lr) ** (round / lr_decay_rounds), capped at
lr_final (the paper: 0.1 -> 1e-3 by round 1000, SGD without momentum; set `local` accordingly).
Aggregation: the (sample-weighted) mean with pruned entries as zeros, or the masked mean over holders.
`personal_bn: true` (not in the paper; a candidate for issue 12) keeps every BatchNorm tensor on its client, as
FedBN does, so that the question "does FLASH's sparse mask cost accuracy once BatchNorm is personal?" can be
asked on the same models. `rescale_init: true` (not in the paper) multiplies θ0's surviving weights by
1/sqrt(layer density) when the run restarts under the hunted mask, so each unit's input variance at θ0 matches
the dense network's: benchmarks/sparse_trainability.py shows a random 10%-dense LeNet-5 that does not train at
lr 0.01 without it. The global model evaluated on the global test set is theta_g under the (densest) server mask.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fedlottery.aggregation import masked_mean, mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.schedule import draw_ids
from fedlottery.sparsity import (
    Mask, prune_and_regrow, random_mask_with_counts, rescale_counts, top_magnitude_mask,
)
from fedlottery.training import train
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply, ServerSetup

DENSITY_PREFIX = "density/"


@dataclass
class FlashOptions:
    density: float = 0.1  # the target density d
    hunt_fraction: float = 0.1  # of all clients, in round 1
    hunt_epochs: int = 10
    prune_rate: float = 0.25  # prune-and-regrow rate at the start of local training, decaying linearly to 0
    regrow_steps: int = 4  # prune-and-regrow steps spread evenly over one local training
    mask_interval: int = 1  # jmwst / hetero-flash: rounds between server mask updates
    levels: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])  # hetero-flash: fractions of d
    aggregation: Literal["mean", "masked_mean"] = "mean"
    weighted: bool = True  # weight clients by sample count
    lr_final: float | None = None  # e.g. 1e-3: decay local lr exponentially to this by lr_decay_rounds
    lr_decay_rounds: int = 1000
    personal_bn: bool = False  # keep BatchNorm weights and statistics on each client (FedBN's rule; not the paper)
    rescale_init: bool = False  # restart from theta_0 * mask / sqrt(layer density) (sparse-aware init; not the paper)

    def validate(self, path: str) -> None:
        checks = {
            "density": 0 < self.density <= 1, "hunt_fraction": 0 < self.hunt_fraction <= 1,
            "hunt_epochs": self.hunt_epochs >= 1, "prune_rate": 0 <= self.prune_rate < 1,
            "regrow_steps": self.regrow_steps >= 0, "mask_interval": self.mask_interval >= 1,
            "levels": bool(self.levels) and all(0 < x <= 1 for x in self.levels),
            "lr_final": self.lr_final is None or self.lr_final > 0, "lr_decay_rounds": self.lr_decay_rounds >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{path}.{key}: invalid value {getattr(self, key)!r}")


def train_with_regrowth(task: ClientTask, mask: Mask, epochs: int, lr: float, opts: FlashOptions) -> Mask:
    """Masked local training interrupted by `regrow_steps` prune-and-regrow steps, at rates decaying
    linearly from prune_rate towards 0 over the local steps; returns the final mask."""
    cfg = task.local.as_training()
    n = len(task.data.train[1])
    total = epochs * math.ceil(n / cfg.batch_size)
    marks = sorted({max(1, round(total * i / (opts.regrow_steps + 1))) for i in range(1, opts.regrow_steps + 1)})
    done = 0
    for mark in sorted(set(marks) | {total}):
        train(task.model, task.data.train, cfg, task.generator, mask=mask, lr=lr, iterations=mark - done)
        done = mark
        if mark in marks:
            rate = opts.prune_rate * (1 - done / (total + 1))
            params = dict(task.model.named_parameters())
            mask = prune_and_regrow(mask, {k: params[k] for k in mask}, rate, task.generator)
            mask.apply_(params)
    return mask


class _Flash(FederatedStrategy):
    """Stage 1 and the shared server state; subclasses say when masks change and how."""

    options_cls = FlashOptions
    state_fields = FederatedStrategy.state_fields + ("generator", "level_of", "level_masks", "hunted")
    rebuilt_fields = FederatedStrategy.rebuilt_fields | {"sizes"}
    searches_masks = False  # clients run prune-and-regrow in mask-search rounds (JMWST)
    regrows = True  # prune-and-regrow moves weights outside the mask sent, within its budget
    metric_bounds = {"density": (0.0, 1.0), "hunted-density": (0.0, 1.0), DENSITY_PREFIX + "*": (0.0, 1.0)}

    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        return frozenset(batchnorm) if options.personal_bn else frozenset()

    def expects_upload(self, partition_id: int, server_round: int) -> bool:
        """Hunters report layer densities only."""
        return self.hunted

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FlashOptions = task.options
        phase, lr = str(task.instructions["phase"]), float(task.instructions["lr"])
        n = len(task.data.train[1])
        if phase == "hunt":
            found = train_with_regrowth(task, task.mask, opts.hunt_epochs, lr, opts)
            densities = {DENSITY_PREFIX + k: v for k, v in found.layer_densities().items()}
            return ClientUpdate({}, task.mask, n, {"hunted-density": found.density(), **densities},
                                send_state=False)
        if phase == "search":
            mask = train_with_regrowth(task, task.mask, task.local.epochs, lr, opts)
        else:
            mask = task.mask
            train(task.model, task.data.train, task.local.as_training(), task.generator, mask=mask, lr=lr,
                  epochs=task.local.epochs)
        return ClientUpdate(clone_state(task.model), mask, n, {"density": mask.density()})

    def __init__(self, setup: ServerSetup, options: Any = None):
        super().__init__(setup, options)
        self.sizes = {n: math.prod(s) for n, s in self.shapes.items()}
        self.generator = torch.Generator().manual_seed(setup.seed)
        d = self.options.density
        start = random_mask_with_counts(self.shapes, rescale_counts({n: d for n in self.shapes}, self.sizes, d),
                                        self.generator)
        self.level_of = {pid: len(self.level_fractions()) - 1 for pid in setup.node_of}
        self.level_masks = [start]
        self.hunted = False

    def level_fractions(self) -> list[float]:
        return [1.0]

    def server_mask(self) -> Mask:
        """The densest level's mask (the one mask for everyone, except in hetero-FLASH)."""
        return self.level_masks[-1]

    def round_lr(self, server_round: int) -> float:
        lr, final = self.setup.local.lr, self.options.lr_final
        if final is None:
            return lr
        return lr * (final / lr) ** (min(server_round, self.options.lr_decay_rounds) / self.options.lr_decay_rounds)

    def is_search_round(self, server_round: int) -> bool:
        """Masks may change in rounds 2, 2 + mask_interval, ... (round 1 is the hunt)."""
        return self.hunted and (server_round - 2) % self.options.mask_interval == 0

    def sample(self, server_round: int) -> list[int]:
        """After the hunt, the run's paired schedule. In the hunt round, ceil(hunt_fraction * N) hunters built on
        that round's scheduled clients, so the hunt stays paired with the other methods' round 1: when more are
        needed, all the scheduled clients plus extras drawn from the others; when fewer, a subset of the
        scheduled ones. Either draw comes from the stream (seed, round, "flash-hunters"), which leaves every
        later round's schedule untouched."""
        scheduled = super().sample(server_round)
        if self.hunted:
            return scheduled
        hunters = self.hunters(server_round, scheduled)
        self.masks.assign(hunters, self.level_masks[0])
        return hunters

    def hunters(self, server_round: int, scheduled: list[int]) -> list[int]:
        """The hunt's clients: `scheduled` cut down to, or topped up to, ceil(hunt_fraction * N)."""
        count = math.ceil(self.options.hunt_fraction * len(self.setup.node_of))
        seed = self.setup.seed
        if count <= len(scheduled):
            return draw_ids(seed, server_round, "flash-hunters", scheduled, count)
        others = sorted(set(self.setup.node_of) - set(scheduled))
        return sorted(scheduled + draw_ids(seed, server_round, "flash-hunters", others, count - len(scheduled)))

    def instructions(self, partition_id: int, server_round: int) -> dict[str, Any]:
        phase = "hunt" if not self.hunted else ("search" if self.searches_masks and self.is_search_round(
            server_round) else "train")
        return {"phase": phase, "lr": self.round_lr(server_round)}

    def global_model_state(self) -> dict[str, torch.Tensor]:
        mask = self.server_mask()
        return {n: (t * mask[n].to(t.dtype) if n in mask else t) for n, t in self.global_state.items()}

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        if not self.hunted:
            self.finish_hunt(replies)
            return
        uploads = self.uploads(replies, self.options.weighted)
        previous = self.global_state
        if self.options.aggregation == "mean":
            averaged = mean(previous, uploads)
        else:
            averaged = masked_mean(previous, uploads, self.setup.prunable)
        self.global_state = {n: (previous[n] if n in self.personal else t) for n, t in averaged.items()}
        self.update_masks(server_round, replies)

    def finish_hunt(self, replies: list[Reply]) -> None:
        """Rescale the hunters' mean layer densities to the target; a fresh random mask; restart at theta_0
        (`rescale_init`: its surviving weights scaled by 1/sqrt(layer density))."""
        densities = {n: sum(r.metrics[DENSITY_PREFIX + n] for r in replies) / len(replies) for n in self.shapes}
        counts = rescale_counts(densities, self.sizes, self.options.density)
        top = random_mask_with_counts(self.shapes, counts, self.generator)
        self.global_state = {k: v.clone() for k, v in self.setup.theta0.items()}
        if self.options.rescale_init:
            scale = {n: d ** -0.5 for n, d in top.layer_densities().items() if d > 0}
            self.global_state.update({n: self.global_state[n] * s for n, s in scale.items()})
        self.set_levels(top)
        self.hunted = True

    def set_levels(self, top: Mask) -> None:
        """Every level's mask from the densest one (nested, top-|w| of theta_g), and each client's mask."""
        fractions = self.level_fractions()
        masks = [top]
        for fraction in reversed(fractions[:-1]):
            counts = rescale_counts(top.layer_densities(), self.sizes, self.options.density * fraction)
            masks.insert(0, top_magnitude_mask(self.global_state, counts, within=masks[0]))
        self.level_masks = masks
        for level, mask in enumerate(masks):
            self.masks.assign([pid for pid, lvl in self.level_of.items() if lvl == level], mask)

    def update_masks(self, server_round: int, replies: list[Reply]) -> None:
        """Called after each aggregation; SPDST keeps the mask."""


class FlashSPDSTStrategy(_Flash):
    """FLASH-SPDST: one hunted mask at the target density, fixed for the whole run."""

    name = "flash-spdst"


class FlashJMWSTStrategy(_Flash):
    """FLASH-JMWST: clients prune-and-regrow; the server keeps the top-|w| of the aggregate at the target."""

    name = "flash-jmwst"
    searches_masks = True

    def update_masks(self, server_round: int, replies: list[Reply]) -> None:
        if not self.is_search_round(server_round):
            return
        masks = [r.upload.mask if r.upload.mask is not None else Mask.ones(self.shapes) for r in replies]
        densities = {n: sum(m.layer_densities()[n] for m in masks) / len(masks) for n in self.shapes}
        counts = rescale_counts(densities, self.sizes, self.options.density)
        self.set_levels(top_magnitude_mask(self.global_state, counts))


class HeteroFlashStrategy(_Flash):
    """hetero-FLASH: clients at density levels, each sent its level's nested mask."""

    name = "hetero-flash"

    def __init__(self, setup: ServerSetup, options: Any = None):
        super().__init__(setup, options)
        order = sorted(setup.node_of)
        random.Random(setup.seed + 1).shuffle(order)
        levels = len(self.level_fractions())
        self.level_of = {pid: i % levels for i, pid in enumerate(order)}

    def level_fractions(self) -> list[float]:
        return sorted(self.options.levels)

    def update_masks(self, server_round: int, replies: list[Reply]) -> None:
        if not self.is_search_round(server_round):
            return
        top = self.server_mask()
        self.set_levels(top_magnitude_mask(self.global_state, top.kept_per_layer(), within=top))
