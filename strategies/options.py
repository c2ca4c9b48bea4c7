"""Config checks that belong to the strategies: names, typed options, and what a strategy needs from the data.

`fedlottery.config` cannot import the strategy registry (the registry imports the config), so the checks that
need it live here: `check_config(cfg)` runs them all, `options_for(cfg, name)` gives one strategy's typed options.
`fedlottery.runtime.experiment.load_experiment` calls `check_config` for every run.
"""
from __future__ import annotations

import re
from typing import Any

import strategies as registry  # attributes are read at call time, so the partial import during start-up is fine
from fedlottery.config import ConfigError, FederatedConfig, from_dict


def _strategy(name: str, key: str) -> type:
    try:
        return registry.get_strategy(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def _options_key(name: str) -> str:
    """How a strategy's options are named in errors: quoted where YAML needs it (`strategy_options."flwr:FedProx"`)."""
    return f"strategy_options.{name}" if re.fullmatch(r"[\w-]+", name) else f'strategy_options."{name}"'


def options_for(cfg: FederatedConfig, name: str) -> Any:
    """The typed, validated options of strategy `name` (its defaults where the config says nothing). A strategy
    whose options are not a dataclass (Flower's own, `flwr:<ClassName>`: its constructor's arguments) checks
    them itself with a `parse_options(raw, key)` classmethod."""
    key = _options_key(name)
    cls = _strategy(name, key)
    parse = getattr(cls, "parse_options", None)
    if parse is not None:
        return parse(cfg.strategy_options.get(name, {}), key)
    return from_dict(cls.options_cls, cfg.strategy_options.get(name, {}), key)


def uses_validation(cls: type, options: Any) -> bool:
    """Whether strategy `cls` with `options` reads the clients' validation split. A strategy declares it with the
    class attribute `needs_validation`: a bool, or a function of the options (e.g. LotteryFL's gate_data)."""
    flag = getattr(cls, "needs_validation", False)
    return bool(flag(options)) if callable(flag) else bool(flag)


def check_config(cfg: FederatedConfig) -> None:
    """Every strategy-side check of a federated config; raises ConfigError naming the key."""
    for i, name in enumerate(cfg.strategies):
        _strategy(name, f"strategies[{i}]")
    for name in dict.fromkeys([*cfg.strategy_options, *cfg.strategies]):  # listed ones too: required options
        options_for(cfg, name)
    for i, name in enumerate(cfg.strategies):
        if cfg.partition.val_fraction == 0 and uses_validation(registry.get_strategy(name), options_for(cfg, name)):
            raise ConfigError(
                f"partition.val_fraction: 0 leaves the clients no validation data, but strategies[{i}] = {name!r} "
                f"decides on validation accuracy; set partition.val_fraction > 0 (e.g. 0.2) or drop {name!r} "
                "from strategies"
            )


__all__ = ["check_config", "options_for", "uses_validation"]
