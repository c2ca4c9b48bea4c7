"""Config checks that belong to the strategies: names, typed options, and what a strategy needs from the data.

`fedlottery.config` cannot import the strategy registry (the registry imports the config), so the checks that
need it live here: `check_config(cfg)` runs them all, `options_for(cfg, name)` gives one strategy's typed options.
`fedlottery.runtime.experiment.load_experiment` calls `check_config` for every run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import strategies as registry  # attributes are read at call time, so the partial import during start-up is fine
from fedlottery.config import CommConfig, ConfigError, FederatedConfig, from_dict
from fedlottery.config.federated import label_of, resolve_entries


def _strategy(name: str, key: str) -> type:
    try:
        return registry.get_strategy(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def _options_key(name: str) -> str:
    """How a strategy's options are named in errors: quoted where YAML needs it (`strategy_options."flwr:FedProx"`)."""
    return f"strategy_options.{name}" if re.fullmatch(r"[\w-]+", name) else f'strategy_options."{name}"'


@dataclass(frozen=True)
class StrategySpec:
    """One entry of `strategies`, resolved once from the config: what it is called (`label`: rows, tables,
    messages, client state), which strategy runs (`name`), its typed options and its comm settings."""

    label: str
    name: str
    options: Any
    comm: CommConfig


def _typed_options(name: str, raw: dict, key: str) -> Any:
    cls = _strategy(name, key)
    parse = getattr(cls, "parse_options", None)
    if parse is not None:
        return parse(raw, key)
    return from_dict(cls.options_cls, raw, key)


def strategy_specs(cfg: FederatedConfig) -> list[StrategySpec]:
    """Every `strategies` entry as a StrategySpec, in order (a plain name is its own label)."""
    specs = []
    for i, entry in enumerate(resolve_entries(cfg)):
        variant = not isinstance(cfg.strategies[i], str)
        key = f"strategies[{i}].options" if variant and cfg.strategies[i].options else _options_key(entry.name)
        _strategy(entry.name, f"strategies[{i}]")
        specs.append(StrategySpec(entry.label, entry.name, _typed_options(entry.name, entry.options, key), entry.comm))
    return specs


def spec_for(cfg: FederatedConfig, label: str) -> StrategySpec:
    """The entry called `label`; a strategy name the list does not hold runs with its strategy_options and the
    run's comm (as before variants existed)."""
    for spec in strategy_specs(cfg):
        if spec.label == label:
            return spec
    return StrategySpec(label, label, options_for(cfg, label), cfg.comm)


def options_for(cfg: FederatedConfig, name: str) -> Any:
    """The typed, validated options of the entry labelled `name` (a variant's overrides applied), else of strategy
    `name` (its defaults where the config says nothing). A strategy whose options are not a dataclass (Flower's own,
    `flwr:<ClassName>`: its constructor's arguments) checks them itself with a `parse_options(raw, key)`
    classmethod."""
    for i, entry in enumerate(cfg.strategies):
        if not isinstance(entry, str) and label_of(entry) == name:
            return strategy_specs(cfg)[i].options
    return _typed_options(name, cfg.strategy_options.get(name, {}), _options_key(name))


def uses_validation(cls: type, options: Any) -> bool:
    """Whether strategy `cls` with `options` reads the clients' validation split. A strategy declares it with the
    class attribute `needs_validation`: a bool, or a function of the options (e.g. LotteryFL's gate_data)."""
    flag = getattr(cls, "needs_validation", False)
    return bool(flag(options)) if callable(flag) else bool(flag)


def check_config(cfg: FederatedConfig) -> None:
    """Every strategy-side check of a federated config; raises ConfigError naming the key."""
    specs = strategy_specs(cfg)  # names, variants' options and comm
    for name, raw in cfg.strategy_options.items():  # options of strategies not listed are checked too
        _typed_options(name, raw, _options_key(name))
    for i, spec in enumerate(specs):
        if cfg.partition.val_fraction == 0 and uses_validation(registry.get_strategy(spec.name), spec.options):
            raise ConfigError(
                f"partition.val_fraction: 0 leaves the clients no validation data, but strategies[{i}] = "
                f"{spec.label!r} decides on validation accuracy; set partition.val_fraction > 0 (e.g. 0.2) or drop "
                f"{spec.label!r} from strategies"
            )


__all__ = ["StrategySpec", "check_config", "options_for", "spec_for", "strategy_specs", "uses_validation"]
