"""The centralized IMP experiment's schema (`fedlottery imp`): pruning, rewinding, controls, early-bird, supermask."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedlottery.config.loader import _check, check_seed, from_dict, load_yaml
from fedlottery.config.sections import DataConfig, ModelConfig, TrainingConfig
from fedlottery.errors import ConfigError


@dataclass
class PruningConfig:
    """How each IMP level prunes and what the survivors are rewound to (ALGORITHMS.md section 1)."""

    style: Literal["iterative", "one_shot"] = "iterative"  # one_shot: each level pruned at once from the dense run
    scope: Literal["layer", "global"] = "layer"  # layer: every tensor loses `rate`; global: one magnitude threshold
    rate: float = 0.2  # fraction of the *remaining* weights removed per level
    conv_rate: float | None = None  # None: same as `rate`
    output_rate: float | None = None  # None: same as `rate` (Frankle & Carbin: half of it)
    layer_rates: dict[str, float] = field(default_factory=dict)  # per-tensor override, by parameter name
    levels: int = 5  # pruning levels after the dense run (level 0)
    target_density: float | None = None  # stop at this density; the last step is clamped to hit it
    overshoot: bool = False  # True: no clamp, the last step may go below target (LotteryFL authors' code)
    # what survivors restart from: init (theta_0), iteration (theta_k), lr (trained weights, LR schedule restarted),
    # finetune (trained weights, finetune_lr)
    rewind: Literal["init", "iteration", "lr", "finetune"] = "init"
    rewind_iteration: int = 0  # for rewind=iteration: the step k whose weights theta_k survivors return to
    finetune_lr: float = 1e-4  # for rewind=finetune: the small constant LR

    def validate(self, path: str) -> None:
        for name in ("rate", "conv_rate", "output_rate"):
            value = getattr(self, name)
            if value is not None:
                _check(0 < value < 1, f"{path}.{name}", f"must be in (0, 1), got {value}")
        for layer, value in self.layer_rates.items():
            _check(0 <= value < 1, f"{path}.layer_rates.{layer}", f"must be in [0, 1), got {value}")
        _check(self.levels >= 0, f"{path}.levels", "must be >= 0")
        if self.target_density is not None:
            _check(0 < self.target_density < 1, f"{path}.target_density", "must be in (0, 1)")
        _check(self.rewind_iteration >= 0, f"{path}.rewind_iteration", "must be >= 0")
        _check(self.finetune_lr > 0, f"{path}.finetune_lr", "must be > 0")


@dataclass
class ControlsConfig:
    """Which controls run beside the ticket, and on which levels (empty list: every level)."""

    # reinit: the ticket's mask with a fresh init; random_mask: a random mask with the ticket's per-layer counts
    variants: list[Literal["reinit", "random_mask"]] = field(default_factory=lambda: ["reinit", "random_mask"])
    levels: list[int] = field(default_factory=list)  # pruned levels (>= 1) the controls run on; empty: every level

    def validate(self, path: str) -> None:
        for i, level in enumerate(self.levels):
            _check(level >= 1, f"{path}.levels[{i}]", "controls run on pruned levels, which are >= 1")


@dataclass
class EarlyBirdConfig:
    """Early-bird detection (You et al. 2020): stop a level's training once its mask stops changing."""

    enabled: bool = False  # measure the mask distance between epochs
    epsilon: float = 0.1  # normalised Hamming distance under which successive masks count as equal
    patience: int = 3  # how many successive epoch-to-epoch distances must stay below epsilon
    stop: bool = False  # True: end the level's training when detected (else only record the epoch)

    def validate(self, path: str) -> None:
        _check(0 < self.epsilon < 1, f"{path}.epsilon", "must be in (0, 1)")
        _check(self.patience >= 1, f"{path}.patience", "must be >= 1")


@dataclass
class SupermaskConfig:
    """A supermask run beside the IMP levels: keep probabilities learned over theta_0's frozen weights (FedPM's
    local rule, trained centrally; fedlottery/supermask.py) for training.iterations steps of training.batch_size,
    early-stopped on validation like a ticket. The mask evaluated is sigmoid(s) > 0.5."""

    enabled: bool = False  # add one supermask run per seed (row variant: supermask, level 0)
    optimizer: Literal["adam", "sgd"] = "adam"  # SGD takes training.momentum
    lr: float = 0.1  # of the scores (FedPM's default: Adam, 0.1)
    init: Literal["normal", "half"] = "normal"  # first probabilities: sigmoid(N(0, 1)) seeded, or 0.5
    ste: Literal["identity", "scaled"] = "identity"  # straight-through dm/ds: 1, or the probability (FedPM code)

    def validate(self, path: str) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, f"{path}.lr", f"must be > 0, got {self.lr}")


@dataclass
class ImpConfig:
    """A centralized lottery-ticket experiment: IMP levels, their controls, repeated over seeds."""

    seeds: list[int] = field(default_factory=lambda: [0])  # one full IMP run per seed, each listed once
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    early_bird: EarlyBirdConfig = field(default_factory=EarlyBirdConfig)
    supermask: SupermaskConfig = field(default_factory=SupermaskConfig)

    def validate(self, path: str = "") -> None:
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        for i, seed in enumerate(self.seeds):
            check_seed(seed, f"seeds[{i}]")
            if seed in self.seeds[:i]:
                raise ConfigError(f"seeds[{i}]: seed {seed} is listed twice; list each seed once")
        if self.pruning.rewind == "iteration":
            _check(
                self.pruning.rewind_iteration < self.training.iterations,
                "pruning.rewind_iteration",
                f"must be below training.iterations ({self.training.iterations})",
            )


def load_imp_config(path: str | Path) -> ImpConfig:
    """Load and validate an IMP experiment config."""
    return from_dict(ImpConfig, load_yaml(path))
