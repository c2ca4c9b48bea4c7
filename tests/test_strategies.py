"""The strategy registry: built-ins, in-process registration, entry-point plug-ins, the documented example."""
import re
from pathlib import Path

import pytest
import torch

import strategies
from fedlottery.aggregation import ClientWeights
from fedlottery.cli import main
from fedlottery.config import LocalTrainingConfig
from strategies import FederatedStrategy, available, get_strategy
from strategies.base import Reply, ServerSetup


def test_builtins_listed(capsys):
    assert {"fedavg", "lotteryfl"} <= set(available())
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "fedavg" in out and "lotteryfl" in out


def test_unknown_strategy_error_lists_installed():
    with pytest.raises(KeyError, match="installed: .*fedavg"):
        get_strategy("nope")


def test_register_rejects_duplicates_and_non_strategies():
    with pytest.raises(ValueError):
        strategies.register(type("Dup", (FederatedStrategy,), {"name": "fedavg"}))
    with pytest.raises(TypeError):
        strategies.register(object)


class _EntryPoint:
    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"pkg:{name}", obj

    def load(self):
        return self._obj


def test_entry_point_plugins_are_discovered(monkeypatch):
    plugin = type("Plugin", (FederatedStrategy,), {"name": "my-plugin"})
    monkeypatch.setattr(strategies.metadata, "entry_points",
                        lambda group: [_EntryPoint("my-plugin", plugin)] if group == strategies.ENTRY_POINT_GROUP else [])
    assert get_strategy("my-plugin") is plugin and "my-plugin" in available()
    monkeypatch.setattr(strategies.metadata, "entry_points", lambda group: [_EntryPoint("other-name", plugin)])
    with pytest.raises(ValueError, match="use one name"):
        available()


def test_readme_strategy_example_works(monkeypatch):
    """docs/writing-a-strategy.md's example code, executed as written."""
    readme = Path(__file__).resolve().parents[1] / "docs" / "writing-a-strategy.md"
    section = readme.read_text().split("# Writing a strategy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setattr(strategies, "_registered", {})
    namespace: dict = {}
    exec(compile(code, "docs/writing-a-strategy.md", "exec"), namespace)
    cls = get_strategy("fedmedian")
    theta0 = {"w": torch.zeros(3), "b": torch.zeros(1)}
    server = cls(ServerSetup(theta0, ["w"], {0: 10, 1: 11, 2: 12}, 3, 0, LocalTrainingConfig()))
    ups = [{"w": torch.tensor([1.0, 5.0, 9.0]), "b": torch.tensor([1.0])},
           {"w": torch.tensor([2.0, 6.0, -9.0]), "b": torch.tensor([2.0])},
           {"w": torch.tensor([100.0, 7.0, 0.0]), "b": torch.tensor([3.0])}]
    server.aggregate(1, [Reply(i, ClientWeights(u, None), 1, {}) for i, u in enumerate(ups)])
    assert server.global_state["w"].tolist() == [2.0, 6.0, 0.0] and server.global_state["b"].tolist() == [2.0]


def test_every_strategy_is_listed_in_order():
    from strategies import available

    assert list(available())[:7] == [
        "fedavg", "lotteryfl", "fedltn", "flash-spdst", "flash-jmwst", "hetero-flash", "cell"]


def test_a_clients_test_split_is_built_only_when_read_and_then_once():
    """A training round never reads the test split (Table-2 MNIST: ~2,000 images against 32 to train on), so
    ClientData builds it from its function on first read, once."""
    from strategies.base import ClientData

    built = []
    split = (torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    data = ClientData(7, split, split, lambda: built.append(1) or split)
    assert built == [] and data.train is split
    assert data.test is split and data.test is split and built == [1]
    assert ClientData(7, split, split, split).test is split  # a split given as it is stays as it is
