"""Results independent of the machine's load: `faults.late` is simulated (no wall-clock wait), the round
deadline is only a hang guard, so a run with one artificially slowed client actor equals the normal run byte
for byte (wall times aside); a client the hang guard does drop flags the run as timing-dependent."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedlottery.config import FederatedConfig, from_dict
from fedlottery.runtime.faults import SLOW_ENV, is_marked_late, mark_late, slow_down

# The tiny experiment with 30% late clients over 3 rounds of 3 (conftest.TINY_CONFIG otherwise).
TIMING = dict(seed=4, rounds=3, clients_per_round=3, partition={"shard_size": 30, "val_fraction": 0.2},
              evaluation={"every": 3}, faults={"late": 0.3})


def test_a_late_mark_costs_no_time_and_is_seen(flower_run):
    reply = Message(RecordDict({"metrics": ConfigRecord({"x": 1})}), 3, "train")
    assert not is_marked_late(reply)
    start = time.monotonic()
    mark_late(reply)
    assert is_marked_late(reply) and time.monotonic() - start < 0.5


def test_the_slow_hook_sleeps_only_for_its_partition(monkeypatch):
    monkeypatch.setenv(SLOW_ENV, "2:0.3")
    start = time.monotonic()
    slow_down(1)
    assert time.monotonic() - start < 0.2
    slow_down(2)
    assert time.monotonic() - start >= 0.3


def _results(run_files, out: Path) -> dict:
    """The run's result files without wall-clock fields (conftest.run_files), and its failures.log."""
    return {**run_files(out), "failures.log": (out / "failures.log").read_text()}


def _run(tmp_path: Path, name: str, monkeypatch, tiny_config, slow: str | None, **simulation) -> Path:
    from fedlottery.runtime.simulation import run_federated

    cfg = from_dict(FederatedConfig, tiny_config(**TIMING, simulation=simulation))
    if slow:
        monkeypatch.setenv(SLOW_ENV, slow)  # the client actors inherit it from this process
    else:
        monkeypatch.delenv(SLOW_ENV, raising=False)
    run_federated(cfg, tmp_path / name, log=lambda _: None)
    return tmp_path / name


@pytest.mark.slow
def test_a_slow_client_actor_changes_nothing_and_a_run_past_the_guard_is_flagged(tmp_path, monkeypatch, tiny_config,
                                                                                       run_files):
    from fedlottery.runs.report import comparison_table

    normal = _results(run_files, _run(tmp_path, "normal", monkeypatch, tiny_config, None))
    assert sum(int(r["failed_train_clients"]) for r in normal["rounds.csv"]) > 0  # late clients were dropped
    assert "deadline" in normal["failures.log"]
    assert normal["summary.json"]["strategies"]["fedavg"]["hang_guard_drops"] == 0
    slowed = _results(run_files, _run(tmp_path, "slowed", monkeypatch, tiny_config, "1:2.5"))
    assert slowed == normal

    guarded = _run(tmp_path, "guarded", monkeypatch, tiny_config, "1:8", round_timeout=2.0)
    summary = json.loads((guarded / "summary.json").read_text())
    assert summary["strategies"]["fedavg"]["hang_guard_drops"] > 0
    table = comparison_table([("guarded", summary)])
    assert "fedavg ‡" in table and "depends on the machine's speed and load" in table
