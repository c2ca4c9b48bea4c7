"""Typed, validated run configuration loaded from YAML.

Every mistake a user can make in a config file (unknown key, wrong type, impossible value) is caught here,
before any work starts, and the error names the key path (e.g. ``pruning.rate``) so it can be fixed at once.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or impossible; the message names the key."""


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how much of the training set is held out for validation."""

    dataset: str = "digits"
    root: str | None = None  # None: $FEDLOTTERY_DATA, then ../shared/data
    val_size: int = 300

    def validate(self, path: str) -> None:
        from fedlottery.data import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError(f"{path}.dataset: unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        _check(self.val_size >= 0, f"{path}.val_size", "must be >= 0")


@dataclass
class ModelConfig:
    """Architecture by registry name and the initialisation of its prunable weights."""

    name: str = "mlp_digits"
    init: Literal["glorot_normal", "kaiming_normal", "default"] = "glorot_normal"

    def validate(self, path: str) -> None:
        from fedlottery.models import MODELS

        if self.name not in MODELS:
            raise ConfigError(f"{path}.name: unknown model {self.name!r}; choose one of {', '.join(sorted(MODELS))}")


@dataclass
class TrainingConfig:
    """One training run: optimizer, schedule length and how often validation is checked (early stopping)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 60
    iterations: int = 2000
    eval_every: int = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    device: str = "cpu"

    def validate(self, path: str) -> None:
        _check(self.lr > 0, f"{path}.lr", "must be > 0")
        _check(0 <= self.momentum < 1, f"{path}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "must be >= 0")
        _check(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _check(self.iterations >= 1, f"{path}.iterations", "must be >= 1")
        _check(1 <= self.eval_every, f"{path}.eval_every", "must be >= 1")


@dataclass
class PruningConfig:
    """How each IMP level prunes and what the survivors are rewound to (ALGORITHMS.md section 1)."""

    style: Literal["iterative", "one_shot"] = "iterative"
    scope: Literal["layer", "global"] = "layer"
    rate: float = 0.2  # fraction of the *remaining* weights removed per level
    conv_rate: float | None = None  # None: same as `rate`
    output_rate: float | None = None  # None: same as `rate` (Frankle & Carbin: half of it)
    layer_rates: dict[str, float] = field(default_factory=dict)  # per-tensor override, by parameter name
    levels: int = 5
    target_density: float | None = None  # stop at this density; the last step is clamped to hit it
    overshoot: bool = False  # True: no clamp, the last step may go below target (LotteryFL authors' code)
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

    variants: list[Literal["reinit", "random_mask"]] = field(default_factory=lambda: ["reinit", "random_mask"])
    levels: list[int] = field(default_factory=list)

    def validate(self, path: str) -> None:
        for i, level in enumerate(self.levels):
            _check(level >= 1, f"{path}.levels[{i}]", "controls run on pruned levels, which are >= 1")


@dataclass
class EarlyBirdConfig:
    """Early-bird detection (You et al. 2020): stop a level's training once its mask stops changing."""

    enabled: bool = False
    epsilon: float = 0.1  # normalised Hamming distance under which successive masks count as equal
    patience: int = 3  # how many successive epoch-to-epoch distances must stay below epsilon
    stop: bool = False  # True: end the level's training when detected (else only record the epoch)

    def validate(self, path: str) -> None:
        _check(0 < self.epsilon < 1, f"{path}.epsilon", "must be in (0, 1)")
        _check(self.patience >= 1, f"{path}.patience", "must be >= 1")


@dataclass
class ImpConfig:
    """A centralized lottery-ticket experiment: IMP levels, their controls, repeated over seeds."""

    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    early_bird: EarlyBirdConfig = field(default_factory=EarlyBirdConfig)

    def validate(self, path: str = "") -> None:
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        if self.pruning.rewind == "iteration":
            _check(
                self.pruning.rewind_iteration < self.training.iterations,
                "pruning.rewind_iteration",
                f"must be below training.iterations ({self.training.iterations})",
            )


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively, then validate."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys here are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name not in kwargs:
            value.validate(f"{path}.{f.name}" if path else f.name)
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # a bug in a config dataclass, not user input


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning file and syntax problems into ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return data or {}


def load_imp_config(path: str | Path) -> ImpConfig:
    """Load and validate an IMP experiment config."""
    return from_dict(ImpConfig, load_yaml(path))


def to_dict(config: Any) -> dict:
    """The config as plain data, for summary.json."""
    return dataclasses.asdict(config)
