"""flwr-datasets partitioners by name (partition scheme: flwr): the class a config names, built with its
arguments and checked, with errors that name the config key. flwr-datasets is imported here only, and lazily."""
from __future__ import annotations

from typing import Any

from fedlottery.config import ConfigError, PartitionConfig

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


def flwr_partitioner(cfg: PartitionConfig, seed: int, path: str = "partition") -> Any:
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
    name = cfg.partitioner
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
    filled = {"num_partitions": cfg.num_clients, "partition_by": "label", "seed": int(seed)}
    fixes = {"num_partitions": "it is partition.num_clients", "partition_by": "fedlottery partitions by label",
             "seed": "it comes from the experiment seed"}
    for key in cfg.args:
        if not isinstance(key, str):
            raise ConfigError(f"{where}args: keys must be argument names (strings), got {key!r}")
        if key in filled and key in params:
            raise ConfigError(f"{where}args.{key}: set by fedlottery ({fixes[key]}); remove it")
        if key not in params:
            own = [p for p in params if p not in filled]
            raise ConfigError(f"{where}args.{key}: {name} takes no argument {key!r}; its arguments are "
                              f"{', '.join(own) or '(none besides num_partitions)'}")
    kwargs = {k: v for k, v in filled.items() if k in params}
    kwargs.update(cfg.args)
    missing = [p.name for p in params.values() if p.default is inspect.Parameter.empty and p.name not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise ConfigError(f"{where}args: {name} needs {', '.join(missing)}; add "
                          f"{'it' if len(missing) == 1 else 'them'} under {where}args")
    try:
        instance = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a third-party constructor refusing user values
        raise ConfigError(f"{where}args: {name} refused {cfg.args}: {' '.join(str(exc).split())}") from None
    sizes = cfg.args.get("partition_sizes")
    if "num_partitions" not in params and isinstance(sizes, (list, tuple)) and len(sizes) != cfg.num_clients:
        raise ConfigError(f"{where}args.partition_sizes: {len(sizes)} sizes for {cfg.num_clients} clients "
                          f"({where}num_clients); give one size per client")
    return instance
