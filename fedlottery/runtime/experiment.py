"""Load and fully check an experiment config: the one entry point above `fedlottery.config`.

`fedlottery.config` knows only the dataclasses and their own rules; the names and options that belong to the
registries are checked beside them (`strategies.check_config`, `fedlottery.data.check_data_config`, the model
registry). This module runs every check, so a config that loads here is one a run can start with:

    cfg = load_experiment("configs/default.yaml")            # federated (fedlottery run / compare, flwr run)
    cfg = load_imp_experiment("configs/imp_digits.yaml")     # centralized IMP (fedlottery imp)

Machine resources (CPUs, GPUs, the Ray cluster) are checked by `fedlottery.runtime.ray_runtime.check_resources`, on the
machine that starts the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlottery.config import (
    FederatedConfig,
    ImpConfig,
    ModelConfig,
    from_dict,
    load_yaml,
    set_dotted,
)
from fedlottery.config.federated import label_of


def check_model_config(cfg: ModelConfig, path: str = "model") -> None:
    """The model's name against the model registry, else as a user's builder (imported, not yet called: what
    it builds is checked by build_model, once the data set gives the input shape)."""
    from fedlottery.models import builder

    builder(cfg.name, f"{path}.name")


def check_experiment(cfg: FederatedConfig) -> FederatedConfig:
    """Every check of a federated config, in memory (after overrides, or built with `from_dict`)."""
    import strategies
    from fedlottery.data import check_data_config

    cfg.validate()
    for name in ("data", "partition", "model", "local", "evaluation", "simulation", "comm", "faults", "checkpoint",
                 "tracking"):
        section = getattr(cfg, name)
        if hasattr(section, "validate"):
            section.validate(name)
    check_data_config(cfg.data, "data")
    if cfg.partition.scheme == "flwr":
        from fedlottery.data.flwr_partitioners import flwr_partitioner

        flwr_partitioner(cfg.partition, seed=0, path="partition")  # its class and arguments, built without data
    check_model_config(cfg.model, "model")
    strategies.check_config(cfg)
    return cfg


def load_experiment(path: str | Path, *, rounds: int | None = None, strategies: list[str] | None = None,
                    settings: list[str] = ()) -> FederatedConfig:
    """Load a federated config file and check all of it; `settings` ("dotted.key=YAML value", the command
    line's --set), then `rounds` / `strategies` (--rounds / --strategies) override the file's values before the
    checks run; a name in `strategies` that is the label of one of the file's variants stands for that variant. Raises ConfigError naming the key."""
    data = load_yaml(path)
    for assignment in settings:
        set_dotted(data, assignment)
    cfg = from_dict(FederatedConfig, data)
    if strategies is not None:  # a label of one of the file's variants picks that variant
        variants = {label_of(e): e for e in cfg.strategies if not isinstance(e, str)}
        cfg.strategies = [variants.get(s, s) for s in strategies]
    if rounds is not None:
        cfg.rounds = rounds
    return check_experiment(cfg)


def experiment_from_dict(data: Any) -> FederatedConfig:
    """A federated config from plain data (e.g. the JSON a client receives), checked like a file."""
    return check_experiment(from_dict(FederatedConfig, data))


def check_imp_experiment(cfg: ImpConfig) -> ImpConfig:
    """Every check of an IMP config, in memory."""
    from fedlottery.data import check_data_config

    cfg.validate()
    check_data_config(cfg.data, "data")
    check_model_config(cfg.model, "model")
    return cfg


def load_imp_experiment(path: str | Path, *, seeds: list[int] | None = None, settings: list[str] = ()
                        ) -> ImpConfig:
    """Load an IMP config file and check all of it; `settings` (--set, as for `load_experiment`), then `seeds`
    (--seeds) override the file's values."""
    data = load_yaml(path)
    for assignment in settings:
        set_dotted(data, assignment)
    cfg = from_dict(ImpConfig, data)
    if seeds is not None:
        cfg.seeds = list(seeds)
    return check_imp_experiment(cfg)


__all__ = [
    "check_experiment", "check_imp_experiment", "check_model_config", "experiment_from_dict",
    "load_experiment", "load_imp_experiment",
]


def resolve_config_path(path: str) -> str:
    """A relative config path: from the working directory if it is there, else from the app's root (the
    project, or Flower's installed copy of the app, which ships configs/*.yaml)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return str(candidate)
    in_app = Path(__file__).resolve().parents[2] / candidate
    return str(in_app if in_app.exists() else candidate)
