"""Typed, validated run configuration loaded from YAML.

Every mistake a user can make in a config file (unknown key, wrong type, impossible value) is caught here,
before any work starts, and the error names the key path (e.g. ``pruning.rate``) so it can be fixed at once.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or impossible; the message names the key."""


# Imported after ConfigError, which the partition module raises.
from fedlottery.data.partitions import PartitionConfig  # noqa: E402


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
        if dataclasses.is_dataclass(value) and f.name not in kwargs and hasattr(value, "validate"):
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
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return value
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


@dataclass
class LocalTrainingConfig:
    """What each client does per round: E epochs of minibatch SGD on its own data (LotteryFL defaults)."""

    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 10

    def validate(self, path: str) -> None:
        self.as_training().validate(path)  # the optimizer fields share TrainingConfig's rules
        _check(self.epochs >= 1, f"{path}.epochs", "must be >= 1")

    def as_training(self) -> TrainingConfig:
        return TrainingConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, batch_size=self.batch_size)


@dataclass
class SimulationConfig:
    """Where client actors run: Ray resources per client (fractional GPUs allowed) and an optional cluster."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str | None = None  # e.g. "auto" or "ray://host:10001"; None: $RAY_ADDRESS, else a local Ray
    device: str = "auto"  # "auto": cuda when the client actor was given a GPU, else cpu
    actors: int | None = None  # client actors at once (None: as many as the resources allow)
    round_timeout: float = 600.0  # seconds a round waits for replies; a later reply counts as failed

    def validate(self, path: str) -> None:
        _check(self.num_cpus > 0, f"{path}.num_cpus", "must be > 0")
        _check(self.num_gpus >= 0, f"{path}.num_gpus", "must be >= 0")
        _check(self.actors is None or self.actors >= 1, f"{path}.actors", "must be >= 1 (or null: automatic)")
        _check(math.isfinite(self.round_timeout) and self.round_timeout > 0, f"{path}.round_timeout",
               "must be a positive number of seconds")


@dataclass
class EvaluationConfig:
    """How often every client's personalised model is evaluated on its whole local test set."""

    every: int = 1  # rounds; the last round is always evaluated
    global_model: bool = True  # also the (unmasked) global model on the global test set
    deployed: bool = False  # also each client's own last locally trained weights (kept on the client)

    def validate(self, path: str) -> None:
        _check(self.every >= 1, f"{path}.every", "must be >= 1")


@dataclass
class CommConfig:
    """How tensors are encoded on the wire (fedlottery.comm.codec): every codec but the lossy value types
    is an exact round trip; 'auto' picks the smallest encoding per tensor."""

    codec: Literal["auto", "bitmap", "indices", "rice"] = "auto"  # how a mask travels when it is news
    values: Literal["float32", "float16", "bfloat16"] = "float32"  # float16/bfloat16 are LOSSY (opt-in)


@dataclass
class FaultsConfig:
    """Seeded fault injection: per round, the probability that a client misbehaves in each way (0: never).
    Draws depend only on (seed, strategy, round, partition, fault), so a run's faults are reproducible."""

    train_crash: float = 0.0  # the client raises during training
    eval_crash: float = 0.0  # the client raises during evaluation
    late: float = 0.0  # the client replies after the round's deadline (simulation.round_timeout)
    corrupt: float = 0.0  # the client replies with corrupted payload bytes
    nan: float = 0.0  # the client replies with a NaN among its weights
    lie_examples: float = 0.0  # the client claims more training examples than it holds

    def validate(self, path: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(0 <= value <= 1, f"{path}.{f.name}", f"is a probability in [0, 1], got {value}")

    def any(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in dataclasses.fields(self))


@dataclass
class CheckpointConfig:
    """How often a run saves everything it needs to resume (`fedlottery run --resume`)."""

    every: int = 1  # rounds between checkpoints; 0 disables them

    def validate(self, path: str) -> None:
        _check(self.every >= 0, f"{path}.every", "must be >= 0 (0 disables checkpoints)")


@dataclass
class FederatedConfig:
    """A federated experiment: the strategies to compare on one partition, model and seed."""

    seed: int = 0
    strategies: list[str] = field(default_factory=lambda: ["lotteryfl", "fedavg"])
    rounds: int = 20
    clients_per_round: int = 5
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    strategy_options: dict[str, dict] = field(default_factory=dict)  # per strategy name, checked by it

    def validate(self, path: str = "") -> None:
        from strategies import get_strategy

        _check(self.rounds >= 1, "rounds", "must be >= 1")
        _check(len(self.strategies) >= 1, "strategies", "name at least one strategy")
        _check(self.clients_per_round >= 1, "clients_per_round", "must be >= 1")
        _check(
            self.clients_per_round <= self.partition.num_clients,
            "clients_per_round",
            f"must be <= partition.num_clients ({self.partition.num_clients})",
        )
        for i, name in enumerate(self.strategies):
            try:
                get_strategy(name)
            except KeyError as err:
                raise ConfigError(f"strategies[{i}]: {err.args[0]}") from None
        for name, options in self.strategy_options.items():
            try:
                strategy = get_strategy(name)
            except KeyError as err:
                raise ConfigError(f"strategy_options.{name}: {err.args[0]}") from None
            from_dict(strategy.options_cls, options, f"strategy_options.{name}")

    def options_for(self, name: str) -> Any:
        """The typed options of strategy `name` (its defaults where the config says nothing)."""
        from strategies import get_strategy

        return from_dict(get_strategy(name).options_cls, self.strategy_options.get(name, {}),
                         f"strategy_options.{name}")


def load_federated_config(path: str | Path) -> FederatedConfig:
    """Load and validate a federated experiment config."""
    return from_dict(FederatedConfig, load_yaml(path))
