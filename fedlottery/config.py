"""Typed, validated run configuration loaded from YAML.

Every mistake a user can make in a config file (unknown key, wrong type, impossible value) is caught here,
before any work starts, and the error names the key path (e.g. ``pruning.rate``) so it can be fixed at once.

This module sits low in the import graph: it imports nothing from the package but `fedlottery.errors`.
Checks that need the registries (strategy names and options, data set and model names) live beside those
registries (`strategies.check_config`, `fedlottery.data.check_data_config`, ...); `fedlottery.experiment`
puts everything together (`load_experiment`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fedlottery.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's SeedSequence takes any int, torch.manual_seed and random.seed do not agree above
NONFINITE = "nonfinite"  # field(metadata={NONFINITE: True}) lets a float field take inf / nan
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_TRAINING_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")

SCHEMES: tuple[str, ...] = ("shards", "dirichlet", "pathological", "iid", "flwr")
TEST_MODES: tuple[str, ...] = ("labels", "matched", "iid", "global")


def check_seed(value: Any, key: str) -> None:
    """A seed is an integer in [0, 2**32 - 1] (what every RNG the simulator seeds accepts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}: {value!r} is not a seed; use an integer in [0, {SEED_MAX}] (2**32 - 1)")


@dataclass(frozen=True)
class PartitionConfig:
    """How to split the training set among clients and what each client is tested on.

    ``iid``, ``dirichlet`` and ``pathological`` run flwr-datasets' IidPartitioner, DirichletPartitioner and
    PathologicalPartitioner; ``shards`` (LotteryFL's one-label shards) is fedlottery's own; ``flwr`` runs any
    flwr-datasets partitioner named by `partitioner` with the keyword arguments `args`.
    """

    scheme: Literal["shards", "dirichlet", "pathological", "iid", "flwr"] = "shards"
    num_clients: int = 20
    shard_size: int = 20  # shards: images per shard
    shards_per_client: int = 2  # shards
    unbalanced_rate: float = 1.0  # shards: all but each client's first shard keep ceil(rate * shard_size)
    alpha: float = 0.5  # dirichlet concentration
    labels_per_client: int = 2  # pathological
    val_fraction: float = 0.1  # share of each client's images held out as its local validation split
    test: Literal["labels", "matched", "iid", "global"] = "labels"  # matched: own label mix, test_size/client
    min_size: int = 2  # dirichlet: redraw until every client has at least this many images (flwr: 11 draws at most)
    partitioner: str | None = None  # flwr: a class of flwr_datasets.partitioner, e.g. "LinearPartitioner"
    # flwr: the partitioner's keyword arguments; num_partitions (= num_clients), partition_by ("label") and
    # seed (from the experiment seed) are filled in by fedlottery and may not be given here.
    args: dict = field(default_factory=dict)

    def validate(self, path: str = "partition") -> None:
        """Reject impossible values up front, naming the key, so a run never starts with them."""
        prefix = f"{path}." if path else ""

        def check(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}{key}: {why}")

        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        check(self.scheme in SCHEMES, "scheme", f"{self.scheme!r} is not one of {', '.join(SCHEMES)}")
        check(self.test in TEST_MODES, "test", f"{self.test!r} is not one of {', '.join(TEST_MODES)}")
        for key in ("num_clients", "shard_size", "shards_per_client", "labels_per_client", "min_size"):
            check(is_int(getattr(self, key)), key, f"expected an integer, got {getattr(self, key)!r}")
        for key in ("unbalanced_rate", "alpha", "val_fraction"):
            value = getattr(self, key)
            check(is_num(value) and math.isfinite(value), key, f"expected a finite number, got {value!r}")
        check(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        check(self.shard_size >= 1, "shard_size", f"must be >= 1, got {self.shard_size}")
        check(self.shards_per_client >= 1, "shards_per_client", f"must be >= 1, got {self.shards_per_client}")
        check(0 < self.unbalanced_rate <= 1, "unbalanced_rate", f"must be in (0, 1], got {self.unbalanced_rate}")
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(self.labels_per_client >= 1, "labels_per_client", f"must be >= 1, got {self.labels_per_client}")
        check(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size}")
        check(isinstance(self.args, dict), "args", f"expected a mapping of keyword arguments, got {self.args!r}")
        if self.scheme != "flwr":
            check(self.partitioner is None, "partitioner", f"only used with scheme: flwr (the scheme is "
                  f"{self.scheme!r}); remove it, or set scheme: flwr")
            check(not self.args, "args", f"only used with scheme: flwr (the scheme is {self.scheme!r}); remove it, "
                  "or set scheme: flwr")
            return
        self.flwr_partitioner(seed=0, path=path)  # class name and arguments, checked by building it (no data)

    def flwr_partitioner(self, seed: int, path: str = "partition") -> Any:
        """scheme flwr: a fresh instance of the flwr-datasets partitioner this config names.

        `args` are passed as given, plus ``num_partitions=num_clients``, ``partition_by="label"`` and
        ``seed=seed`` where the constructor takes them.  Raises ConfigError naming ``<path>.partitioner`` or
        ``<path>.args`` for an unknown or unusable class, unknown or missing arguments, and values its
        constructor refuses.  (flwr-datasets is imported here, lazily: only configs that use it pay for it.)
        """
        import inspect

        from flwr_datasets import partitioner as flwr_partitioners

        where = f"{path}." if path else ""
        usable = sorted(
            n for n in flwr_partitioners.__all__
            if n != "Partitioner" and n not in _FLWR_UNUSABLE and isinstance(getattr(flwr_partitioners, n), type)
        )
        name = self.partitioner
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}partitioner: scheme flwr needs the class name of a flwr-datasets partitioner; "
                              f"choose one of {', '.join(usable)}")
        if name in _FLWR_UNUSABLE:
            raise ConfigError(f"{where}partitioner: {name} {_FLWR_UNUSABLE[name]}; choose one of {', '.join(usable)}")
        cls = getattr(flwr_partitioners, name, None) if name in flwr_partitioners.__all__ else None
        if not (isinstance(cls, type) and issubclass(cls, flwr_partitioners.Partitioner)) or inspect.isabstract(cls):
            raise ConfigError(f"{where}partitioner: {name!r} is not a flwr-datasets partitioner; choose one of "
                              f"{', '.join(usable)}")
        params = inspect.signature(cls).parameters
        filled = {"num_partitions": self.num_clients, "partition_by": "label", "seed": int(seed)}
        fixes = {"num_partitions": "it is partition.num_clients", "partition_by": "fedlottery partitions by label",
                 "seed": "it comes from the experiment seed"}
        for key in self.args:
            if not isinstance(key, str):
                raise ConfigError(f"{where}args: keys must be argument names (strings), got {key!r}")
            if key in filled and key in params:
                raise ConfigError(f"{where}args.{key}: set by fedlottery ({fixes[key]}); remove it")
            if key not in params:
                own = [p for p in params if p not in filled]
                raise ConfigError(f"{where}args.{key}: {name} takes no argument {key!r}; its arguments are "
                                  f"{', '.join(own) or '(none besides num_partitions)'}")
        kwargs = {k: v for k, v in filled.items() if k in params}
        kwargs.update(self.args)
        missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.name not in kwargs
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing:
            raise ConfigError(f"{where}args: {name} needs {', '.join(missing)}; add "
                              f"{'it' if len(missing) == 1 else 'them'} under {where}args")
        try:
            instance = cls(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a third-party constructor refusing user values
            raise ConfigError(f"{where}args: {name} refused {self.args}: {' '.join(str(exc).split())}") from None
        sizes = self.args.get("partition_sizes")
        if "num_partitions" not in params and isinstance(sizes, (list, tuple)) and len(sizes) != self.num_clients:
            raise ConfigError(f"{where}args.partition_sizes: {len(sizes)} sizes for {self.num_clients} clients "
                              f"({where}num_clients); give one size per client")
        return instance


# flwr-datasets partitioners that cannot split fedlottery's data sets (images and labels only), and why.
_FLWR_UNUSABLE: dict[str, str] = {
    "NaturalIdPartitioner": "needs a column of client ids, and fedlottery's data sets hold only images and labels",
    "GroupedNaturalIdPartitioner": "needs a column of client ids, and fedlottery's data sets hold only images and "
                                   "labels",
    "VerticalEvenPartitioner": "splits columns (vertical FL), not rows among clients",
    "VerticalSizePartitioner": "splits columns (vertical FL), not rows among clients",
    "IdToSizeFncPartitioner": "takes a Python function, which a config cannot hold (LinearPartitioner, "
                              "SquarePartitioner and ExponentialPartitioner are its ready-made forms)",
}


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how much of the training set is held out for validation.

    ``dataset: hf`` reads a Hugging Face data set saved with ``DatasetDict.save_to_disk`` (splits ``train`` and
    ``test``) from `path`, offline; its images are in `image_column` (default ``image``) and its integer,
    ClassLabel or string labels in `label_column` (default ``label``).
    """

    dataset: str = "digits"
    root: str | None = None  # None: $FEDLOTTERY_DATA, then ../shared/data
    val_size: int = 300
    path: str | None = None  # dataset hf: the directory save_to_disk wrote (relative: to the working directory)
    image_column: str | None = None  # dataset hf: None means "image"
    label_column: str | None = None  # dataset hf: None means "label"

    def validate(self, path: str) -> None:
        # The data set's name (and, for hf, the directory and columns) is checked against the loaders by
        # fedlottery.data.check_data_config.
        _check(self.val_size >= 0, f"{path}.val_size", "must be >= 0")
        for key in ("path", "image_column", "label_column"):
            value = getattr(self, key)
            if value is None:
                continue
            _check(self.dataset == "hf", f"{path}.{key}", f"only used with dataset: hf (the data set is "
                   f"{self.dataset!r}); remove it")
            _check(isinstance(value, str) and value != "", f"{path}.{key}", f"expected a non-empty string, got "
                   f"{value!r}")


@dataclass
class ModelConfig:
    """Architecture by registry name and the initialisation of its prunable weights."""

    name: str = "mlp_digits"
    init: Literal["glorot_normal", "kaiming_normal", "default"] = "glorot_normal"
    # The name is checked against the model registry by fedlottery.experiment (check_model_config).


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
        _check(bool(_TRAINING_DEVICE.match(self.device)), f"{path}.device",
               f"{self.device!r} is not a device; use 'cpu', 'cuda' or 'cuda:<index>'")


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
class SupermaskConfig:
    """A supermask run beside the IMP levels: keep probabilities learned over theta_0's frozen weights (FedPM's
    local rule, trained centrally; fedlottery/supermask.py) for training.iterations steps of training.batch_size,
    early-stopped on validation like a ticket. The mask evaluated is sigmoid(s) > 0.5."""

    enabled: bool = False
    optimizer: Literal["adam", "sgd"] = "adam"  # SGD takes training.momentum
    lr: float = 0.1  # of the scores (FedPM's default: Adam, 0.1)
    init: Literal["normal", "half"] = "normal"  # first probabilities: sigmoid(N(0, 1)) seeded, or 0.5
    ste: Literal["identity", "scaled"] = "identity"

    def validate(self, path: str) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, f"{path}.lr", f"must be > 0, got {self.lr}")


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


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively, then validate.

    Floats must be finite unless the field says otherwise (``field(metadata={NONFINITE: True})``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = f"{path}." if path else ""
    for name in data:
        if not isinstance(name, str):
            raise ConfigError(f"{where}{name!r}: keys must be names (strings), got {type(name).__name__}; "
                              f"valid keys here are {', '.join(sorted(fields))}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys here are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, key, bool(fields[name].metadata.get(NONFINITE)))
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name not in kwargs and hasattr(value, "validate"):
            value.validate(f"{path}.{f.name}" if path else f.name)
    return obj


def _coerce(hint: Any, value: Any, key: str, nonfinite: bool = False) -> Any:
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
                return _coerce(arg, value, key, nonfinite)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]", nonfinite) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}", nonfinite) for k, v in value.items()}
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value} is too large for a floating-point number") from None
        if not nonfinite and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number; give a finite value (.inf / .nan are "
                              "not allowed here)")
        return value
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


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys it merges in
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first given at line {first}); "
                                  "give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning file and syntax problems into one-line ConfigErrors.

    Refused: a missing file, a directory, a binary or non-UTF-8 file, an empty file (no silent defaults),
    invalid YAML, duplicate keys, and a top level that is not a mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file such as configs/default.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; give a YAML file such as configs/default.yaml")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}); give a YAML config file") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path} is a binary file (it holds NUL bytes); give a YAML config file")
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise ConfigError(f"config file {path}: not valid YAML{where}: {what}; fix the syntax there") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty (no settings); write the experiment's settings in it, "
                          "e.g. start from configs/default.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of settings (key: value), "
                          f"got a {type(data).__name__}")
    return data


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one command-line override, "section.key=value" (the value read as YAML, so `true`, `0.3`,
    `[a, b]` and `{k: v}` mean what they mean in the file), to a config mapping loaded by `load_yaml`. Missing
    sections are created; unknown keys are left for `from_dict` to refuse by name."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {assignment!r}: write KEY=VALUE with a dotted key, e.g. "
                          "--set strategy_options.flash-jmwst.personal_bn=true")
    try:
        value = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML ({' '.join(str(err).split())})") from None
    where = data
    for depth, part in enumerate(parts[:-1]):
        if where.get(part) is None:  # absent, or an empty YAML section (`fedpm:` with nothing under it)
            where[part] = {}
        where = where[part]
        if not isinstance(where, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
    where[parts[-1]] = value


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
    ray_address: str | None = None  # "host:6379" or "ray://host:10001"; None: $RAY_ADDRESS, else a private local Ray
    device: str = "auto"  # "auto": cuda when the client actor was given a GPU, else cpu; "cuda", "cuda:<i>"
    actors: int | None = None  # client actors at once (None: as many as the resources allow)
    round_timeout: float = 600.0  # seconds a round waits for replies; a later reply counts as failed

    def validate(self, path: str) -> None:
        _check(self.num_cpus > 0, f"{path}.num_cpus", "must be > 0")
        _check(self.num_gpus >= 0, f"{path}.num_gpus", "must be >= 0")
        _check(self.actors is None or self.actors >= 1, f"{path}.actors", "must be >= 1 (or null: automatic)")
        if self.actors is not None:
            total = self.actors * self.num_cpus
            _check(math.isclose(total, round(total)), f"{path}.actors",
                   f"{self.actors} actors x num_cpus {self.num_cpus:g} = {total:g} CPUs; Ray counts whole CPUs, so "
                   "choose actors and num_cpus whose product is a whole number")
        _check(math.isfinite(self.round_timeout) and self.round_timeout > 0, f"{path}.round_timeout",
               "must be a positive number of seconds")
        if not _DEVICE.match(self.device):
            hint = " (a GPU is 'cuda')" if self.device.strip().lower() in ("gpu", "gpus", "nvidia") else ""
            raise ConfigError(f"{path}.device: {self.device!r} is not a device{hint}; use 'auto', 'cpu', 'cuda' "
                              "or 'cuda:<index>'")
        if self.device.startswith("cuda") and self.num_gpus == 0:
            raise ConfigError(f"{path}.device: {self.device!r} needs {path}.num_gpus > 0 (Ray hides the GPUs from "
                              "a client actor given none); set num_gpus (e.g. 1, or 0.5 to share a GPU) or "
                              "device: auto")
        if self.ray_address is not None:
            check_ray_address(self.ray_address, f"{path}.ray_address")


def check_ray_address(address: str, key: str) -> None:
    """An explicit Ray address: 'host:port' (a cluster's GCS) or 'ray://host:port' (Ray Client). 'auto' is refused:
    it attaches to whichever cluster this machine last started, which may be another job's."""
    fix = "give the cluster's explicit address, e.g. 127.0.0.1:6379 as printed by `ray start --head`"
    if address.strip().lower() == "auto":
        raise ConfigError(f"{key}: 'auto' is refused (it attaches to whatever Ray cluster this machine last "
                          f"started, possibly another job's); {fix}, or leave it unset for a private local Ray")
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {address!r} is not a Ray address; {fix} (or ray://<host>:10001 for Ray Client)")


@dataclass
class EvaluationConfig:
    """How often every client's personalised model is evaluated on its whole local test set."""

    every: int = 1  # rounds; the last round is always evaluated
    global_model: bool = True  # also the (unmasked) global model on the global test set
    deployed: bool = False  # also each client's own last locally trained weights (kept on the client)
    finetune_epochs: int = 0  # > 0: also the personalised model after this many local epochs (a copy)
    # > 0: an evaluation before the last round tests this many clients (a seeded sample, the same for every
    # strategy of the run); the last round always tests every client. 0: every client every time.
    sample: int = 0

    def validate(self, path: str) -> None:
        _check(self.every >= 1, f"{path}.every", "must be >= 1")
        _check(self.sample >= 0, f"{path}.sample", "must be >= 0 (0: every client at every evaluation)")
        _check(self.finetune_epochs >= 0, f"{path}.finetune_epochs", "must be >= 0 (0: no fine-tuned column)")


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
        """The checks that need nothing but the config; strategy names and options, data set and model names
        are checked beside their registries (fedlottery.experiment.check_experiment runs them all)."""
        check_seed(self.seed, "seed")
        _check(self.rounds >= 1, "rounds", "must be >= 1")
        _check(len(self.strategies) >= 1, "strategies", "name at least one strategy")
        for i, name in enumerate(self.strategies):
            if name in self.strategies[:i]:
                raise ConfigError(f"strategies[{i}]: {name!r} is listed twice (first at strategies"
                                  f"[{self.strategies.index(name)}]); list each strategy once")
        _check(self.clients_per_round >= 1, "clients_per_round", "must be >= 1")
        _check(
            self.clients_per_round <= self.partition.num_clients,
            "clients_per_round",
            f"must be <= partition.num_clients ({self.partition.num_clients})",
        )


def load_federated_config(path: str | Path) -> FederatedConfig:
    """Load a federated experiment config with the checks this module can make on its own. A run wants
    `fedlottery.experiment.load_experiment`, which also checks strategies, data set and model names."""
    return from_dict(FederatedConfig, load_yaml(path))
