"""Federated strategies by name: the built-in ones and third-party plug-ins.

A plug-in package registers a `FederatedStrategy` subclass under the entry-point group
`fedlottery.strategies`, e.g. in its pyproject.toml:

    [project.entry-points."fedlottery.strategies"]
    my-method = "my_package.my_module:MyStrategy"

`fedlottery strategies` lists everything installed.
"""
from __future__ import annotations

from importlib import metadata

from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, NoOptions, ServerSetup
from strategies.cell import CELLStrategy
from strategies.dispfl import DisPFLStrategy
from strategies.fedavg import FedAvgStrategy
from strategies.ditto import DittoStrategy
from strategies.fedbabu import FedBABUStrategy
from strategies.fedbn import FedBNStrategy
from strategies.feddst import FedDSTStrategy
from strategies.fedltn import FedLTNStrategy
from strategies.fedper import FedPerStrategy
from strategies.fedpm import FedPMStrategy
from strategies.fedrep import FedRepStrategy
from strategies.fedselect import FedSelectStrategy
from strategies.fedspa import FedSpaStrategy
from strategies.flash import FlashJMWSTStrategy, FlashSPDSTStrategy, HeteroFlashStrategy
from strategies.flower import flower_strategy, is_flower_name
from strategies.local import LocalStrategy
from strategies.lotteryfl import LotteryFLStrategy
from strategies.options import StrategySpec, check_config, options_for, spec_for, strategy_specs, uses_validation

ENTRY_POINT_GROUP = "fedlottery.strategies"
_BUILTIN: dict[str, type[FederatedStrategy]] = {cls.name: cls for cls in (
    FedAvgStrategy, LotteryFLStrategy, FedLTNStrategy, FlashSPDSTStrategy, FlashJMWSTStrategy,
    HeteroFlashStrategy, CELLStrategy, FedBNStrategy, LocalStrategy, FedPMStrategy, FedSelectStrategy,
    FedDSTStrategy, FedSpaStrategy, DisPFLStrategy,
    FedPerStrategy, FedRepStrategy, FedBABUStrategy, DittoStrategy,
)}
_registered: dict[str, type[FederatedStrategy]] = {}


def register(cls: type[FederatedStrategy]) -> type[FederatedStrategy]:
    """Register a strategy class in-process (usable as a decorator); its `name` must be new."""
    if not (isinstance(cls, type) and issubclass(cls, FederatedStrategy)):
        raise TypeError(f"{cls!r} is not a FederatedStrategy subclass")
    if cls.name in _BUILTIN or cls.name in _registered:
        raise ValueError(f"a strategy named {cls.name!r} is already registered")
    _registered[cls.name] = cls
    return cls


def _plugins() -> dict[str, type[FederatedStrategy]]:
    found = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, FederatedStrategy)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a FederatedStrategy subclass")
        if cls.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} points at a strategy named {cls.name!r}; use one name")
        found[ep.name] = cls
    return found


def available() -> dict[str, type[FederatedStrategy]]:
    """Every strategy by name: built-ins, then in-process registrations, then installed plug-ins. Flower's own
    strategies (`flwr:<ClassName>`, strategies.flower.flower_class_names()) resolve by name but are not listed,
    so `fedlottery compare` without --strategies runs fedlottery's own."""
    found = dict(_BUILTIN)
    for name, cls in {**_plugins(), **_registered}.items():
        found.setdefault(name, cls)
    return found


def get_strategy(name: str) -> type[FederatedStrategy]:
    """The strategy class by name; `flwr:<ClassName>` is Flower's own strategy class (strategies.flower),
    made from the name in any process (e.g. a Ray actor)."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _registered:
        return _registered[name]
    if is_flower_name(name):
        return flower_strategy(name)
    strategies = available()
    if name not in strategies:
        raise KeyError(f"unknown strategy {name!r}; installed: {', '.join(sorted(strategies))}")
    return strategies[name]


__all__ = [
    "ClientTask", "ClientUpdate", "FederatedStrategy", "NoOptions", "ServerSetup",
    "ENTRY_POINT_GROUP", "available", "get_strategy", "register",
    "StrategySpec", "check_config", "options_for", "spec_for", "strategy_specs", "uses_validation",
]
