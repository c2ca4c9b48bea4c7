"""The federated experiment's schema (`fedlottery run | compare`, `flwr run`): partition, local training,
simulation, evaluation, wire format, faults, checkpoints and the strategies to compare.

A scheme: flwr partition names a flwr-datasets partitioner; building it (and so checking its arguments) is
`fedlottery.data.flwr_partitioners`' job, because this package imports no FL library.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedlottery.config.loader import _DEVICE, _check, check_seed, from_dict, load_yaml, to_dict
from fedlottery.config.sections import DataConfig, ModelConfig, TrainingConfig
from fedlottery.errors import ConfigError

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
SCHEMES: tuple[str, ...] = ("shards", "dirichlet", "pathological", "iid", "flwr")
TEST_MODES: tuple[str, ...] = ("labels", "matched", "iid", "global")


@dataclass(frozen=True)
class PartitionConfig:
    """How to split the training set among clients and what each client is tested on.

    ``iid``, ``dirichlet`` and ``pathological`` run flwr-datasets' IidPartitioner, DirichletPartitioner and
    PathologicalPartitioner; ``shards`` (LotteryFL's one-label shards) is fedlottery's own; ``flwr`` runs any
    flwr-datasets partitioner named by `partitioner` with the keyword arguments `args`.
    """

    scheme: Literal["shards", "dirichlet", "pathological", "iid", "flwr"] = "shards"  # how labels are dealt out
    num_clients: int = 20  # partitions, one simulated client each
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
        # scheme flwr: the class and its arguments are checked by building it (fedlottery.data.flwr_partitioners)


@dataclass
class LocalTrainingConfig:
    """What each client does per round: E epochs of minibatch SGD on its own data (LotteryFL defaults)."""

    optimizer: Literal["adam", "sgd"] = "sgd"  # every client's local optimizer
    lr: float = 0.01  # local learning rate
    momentum: float = 0.5  # SGD momentum, in [0, 1)
    weight_decay: float = 0.0  # L2 penalty passed to the optimizer
    batch_size: int = 32  # images per local step
    epochs: int = 10  # local epochs E over the client's training split per round
    # "channels_last": conv models train with NHWC weights and batches on the CPU (0.75x the CPU per epoch for
    # LotteryFL's CNNs, 1.04x for LeNet-5-BN: benchmarks/results/training_memory_format.md). Float rounding
    # differs from "contiguous", so runs in the two layouts do not merge; the shipped configs, whose records were
    # made in it, keep "contiguous"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"

    def validate(self, path: str) -> None:
        self.as_training().validate(path)  # the optimizer fields share TrainingConfig's rules
        _check(self.epochs >= 1, f"{path}.epochs", "must be >= 1")

    def as_training(self) -> TrainingConfig:
        return TrainingConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, batch_size=self.batch_size,
                              memory_format=self.memory_format)


@dataclass
class SimulationConfig:
    """Where client actors run: Ray resources per client (fractional GPUs allowed) and an optional cluster."""

    num_cpus: float = 1.0  # Ray CPUs per client actor
    num_gpus: float = 0.0  # Ray GPUs per client actor; fractions share one (0.25: four actors per GPU)
    ray_address: str | None = None  # "host:6379" or "ray://host:10001"; None: $RAY_ADDRESS, else a private local Ray
    device: str = "auto"  # "auto": cuda when the client actor was given a GPU, else cpu; "cuda", "cuda:<i>"
    actors: int | None = None  # client actors at once (None: as many as the resources allow)
    # A hang guard, not a deadline: seconds of wall clock a round waits for replies before giving up on a client
    # that hangs. Lateness is simulated (faults.late), so no result depends on it unless it fires, and then the
    # run is flagged as timing-dependent (summary.json's hang_guard_drops, the final table). Generous on purpose.
    round_timeout: float = 1800.0

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
    # where the fine-tuned column is computed: at every evaluation, or only at the last round's (the only one
    # the tables report; fine-tuning each client's copy is most of an evaluation's cost)
    finetune_rounds: Literal["all", "last"] = "all"
    # > 0: an evaluation before the last round tests this many clients (a seeded sample, the same for every
    # strategy of the run); the last round always tests every client. 0: every client every time.
    sample: int = 0

    def validate(self, path: str) -> None:
        _check(self.every >= 1, f"{path}.every", "must be >= 1")
        _check(self.sample >= 0, f"{path}.sample", "must be >= 0 (0: every client at every evaluation)")
        _check(self.finetune_epochs >= 0, f"{path}.finetune_epochs", "must be >= 0 (0: no fine-tuned column)")


@dataclass
class QuantizeConfig:
    """comm.uplink.quantize: b-bit unbiased stochastic quantisation of each uploaded tensor's update
    (fedlottery.comm.quantize), levels relative to max |Delta| ("max") or ||Delta||_2 ("l2", QSGD's)."""

    bits: int = 8
    scale: Literal["max", "l2"] = "max"
    coding: Literal["auto", "fixed", "zlib"] = "auto"  # level stream: b bits each, zlib, or the smaller

    def validate(self, path: str) -> None:
        _check(isinstance(self.bits, int) and 2 <= self.bits <= 16, f"{path}.bits",
               f"must be an integer in [2, 16] (a sign and at least one level), got {self.bits!r}")


@dataclass
class StcConfig:
    """comm.uplink.stc: sparse ternary compression with error feedback (fedlottery.comm.stc): the top
    `fraction` of each tensor's update plus the client's residual, sent as +-mu."""

    fraction: float = 0.01

    def validate(self, path: str) -> None:
        _check(0 < self.fraction <= 1, f"{path}.fraction", f"must be in (0, 1] (Sattler et al. use 1/25 to "
               f"1/400), got {self.fraction}")


@dataclass
class UplinkConfig:
    """How clients compress what they upload (fedlottery.comm.uplink); nothing set: exact, as `codec` says."""

    quantize: QuantizeConfig | None = None
    stc: StcConfig | None = None
    # BatchNorm running statistics (running_mean, running_var): "exact" sends them as float32 like an
    # uncompressed run, because they are averages, not gradients, and a ternary or coarse update to a
    # variance can make it negative; "compressed" treats them as any other float tensor (records before
    # this option existed were made so).
    statistics: Literal["exact", "compressed"] = "exact"

    def validate(self, path: str) -> None:
        _check(self.quantize is None or self.stc is None, path, "set one of quantize and stc, not both")
        _check(self.statistics in ("exact", "compressed"), f"{path}.statistics",
               f"must be 'exact' or 'compressed', got {self.statistics!r}")


@dataclass
class CommConfig:
    """How tensors are encoded on the wire (fedlottery.comm.codec): every codec but the lossy value types
    is an exact round trip; 'auto' picks the smallest encoding per tensor. `uplink` compresses what clients
    send up (lossy, opt-in: fedlottery.comm.uplink)."""

    codec: Literal["auto", "bitmap", "indices", "rice"] = "auto"  # how a mask travels when it is news
    values: Literal["float32", "float16", "bfloat16"] = "float32"  # float16/bfloat16 are LOSSY (opt-in)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)  # lossy compression of what clients send up

    def validate(self, path: str) -> None:
        compressed = self.uplink.quantize is not None or self.uplink.stc is not None
        _check(not compressed or self.values == "float32", f"{path}.values",
               f"{self.values} downlinks make the weights a client received differ from those the server holds, "
               "and a compressed uplink sends the update against them; use values: float32 with comm.uplink")


@dataclass
class StrategyVariant:
    """One entry of `strategies` written as a mapping: strategy `name` under its own `label` (what every table,
    row and message calls it), with `options` over strategy_options[name] and `comm` over the run's comm."""

    name: str
    label: str | None = None
    options: dict = field(default_factory=dict)
    comm: dict = field(default_factory=dict)

    def validate(self, path: str) -> None:
        _check(isinstance(self.name, str) and self.name != "", f"{path}.name", "name the strategy, e.g. fedavg")
        if self.label is not None:
            _check(bool(_LABEL.fullmatch(self.label)), f"{path}.label",
                   f"{self.label!r} is not a label; use letters, digits and _ . + - (e.g. fedavg-q8)")


@dataclass(frozen=True)
class StrategyEntry:
    """A `strategies` entry resolved: label, strategy name, raw options (over strategy_options) and comm."""

    label: str
    name: str
    options: dict
    comm: CommConfig


@dataclass
class FaultsConfig:
    """Seeded fault injection: per round, the probability that a client misbehaves in each way (0: never).
    Draws depend only on (seed, strategy, round, partition, fault), so a run's faults are reproducible."""

    train_crash: float = 0.0  # the client raises during training
    eval_crash: float = 0.0  # the client raises during evaluation
    late: float = 0.0  # the client's reply misses the round's deadline, in simulated time (no wall-clock wait)
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
class TrackingConfig:
    """Live tracking while a run goes on (rounds.csv stays the record): every rounds.csv metric per round."""

    tensorboard: str | None = None  # a directory for TensorBoard event files (<dir>/<strategy>/seed<S>); None: off

    def validate(self, path: str) -> None:
        _check(self.tensorboard is None or (isinstance(self.tensorboard, str) and self.tensorboard != ""),
               f"{path}.tensorboard", "expected a directory path, or null to turn tracking off")


@dataclass
class FederatedConfig:
    """A federated experiment: the strategies to compare on one partition, model and seed."""

    seed: int = 0  # drives theta_0, the partition, client sampling and local training; --seeds runs several
    # strategy names (`fedlottery strategies`), run in turn on the same clients and theta_0, or
    # {name, label, options, comm}: a variant of one (several variants side by side); see `entries()`
    strategies: list[str | StrategyVariant] = field(default_factory=lambda: ["lotteryfl", "fedavg"])
    rounds: int = 20  # federated rounds per strategy
    clients_per_round: int = 5  # clients sampled per round (seeded), at most partition.num_clients
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    strategy_options: dict[str, dict] = field(default_factory=dict)  # per strategy name, checked by it

    def validate(self, path: str = "") -> None:
        """The checks that need nothing but the config; strategy names and options, data set and model names
        are checked beside their registries (fedlottery.runtime.experiment.check_experiment runs them all)."""
        check_seed(self.seed, "seed")
        _check(self.rounds >= 1, "rounds", "must be >= 1")
        _check(len(self.strategies) >= 1, "strategies", "name at least one strategy")
        labels = [label_of(entry) for entry in self.strategies]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ConfigError(f"strategies[{i}]: {label!r} is listed twice (first at strategies"
                                  f"[{labels.index(label)}]); list each strategy once, and give each variant of "
                                  "one strategy its own label")
        _check(self.clients_per_round >= 1, "clients_per_round", "must be >= 1")
        _check(
            self.clients_per_round <= self.partition.num_clients,
            "clients_per_round",
            f"must be <= partition.num_clients ({self.partition.num_clients})",
        )


def label_of(entry: "str | StrategyVariant") -> str:
    """What a `strategies` entry is called: its label, else its strategy name."""
    return entry if isinstance(entry, str) else entry.label or entry.name


def resolve_entries(cfg: FederatedConfig) -> list[StrategyEntry]:
    """Every `strategies` entry as (label, name, raw options, comm), the variants' overrides applied: options
    over strategy_options[name] (key by key), comm over the run's comm (section by section)."""
    entries = []
    for i, entry in enumerate(cfg.strategies):
        if isinstance(entry, str):
            entries.append(StrategyEntry(entry, entry, dict(cfg.strategy_options.get(entry) or {}), cfg.comm))
            continue
        options = {**(cfg.strategy_options.get(entry.name) or {}), **entry.options}
        comm = cfg.comm
        if entry.comm:
            comm = from_dict(CommConfig, {**to_dict(cfg.comm), **entry.comm}, f"strategies[{i}].comm")
        entries.append(StrategyEntry(label_of(entry), entry.name, options, comm))
    return entries


def load_federated_config(path: str | Path) -> FederatedConfig:
    """Load a federated experiment config with the checks this module can make on its own. A run wants
    `fedlottery.runtime.experiment.load_experiment`, which also checks strategies, data set and model names."""
    return from_dict(FederatedConfig, load_yaml(path))
