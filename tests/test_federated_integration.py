"""The real thing, small: Flower's simulation runtime on a real local Ray, 4 clients, 2 or 3 rounds."""
import json
import math

import pytest

from fedlottery.config import FederatedConfig, from_dict
from fedlottery.models import build_model, clone_state, prunable_names
from fedlottery.runs.report import report
from fedlottery.runs.results import read_csv
from fedlottery.runs.results import ROUND_COLUMNS
from fedlottery.runtime.simulation import run_federated

from federation_helpers import small_config


def _config(tiny_config):
    return from_dict(FederatedConfig, tiny_config(
        strategies=["lotteryfl", "fedavg"],
        local={"epochs": 2},
        # threshold 0 opens the gate at once, so round 1 prunes and round 2 must ship no mask at all
        strategy_options={"lotteryfl": {"acc_threshold": 0.0, "prune_rate": 0.5, "target_density": 0.5}},
        # round 1 tests a seeded sample of 2 clients, the last round every client
        evaluation={"deployed": True, "finetune_epochs": 1, "sample": 2},
    ))


@pytest.mark.slow
def test_simulation_runs_lotteryfl_and_fedavg(tmp_path, tiny_config):
    summary = run_federated(_config(tiny_config), tmp_path, log=lambda _: None)
    rows = read_csv(tmp_path / "rounds.csv")
    assert list(rows[0]) == ROUND_COLUMNS
    assert [(r["strategy"], r["round"]) for r in rows] == [
        ("lotteryfl", 1), ("lotteryfl", 2), ("fedavg", 1), ("fedavg", 2)]
    assert all(r["clients"] == 2 and r["failed_train_clients"] == 0 and r.get("failed_eval_clients") in (0, None) for r in rows)
    lfl, avg = rows[:2], rows[2:]
    # Round 1's evaluation reached its sample of 2, the last round every client; accuracy is a real fraction.
    assert [r["evaluated_clients"] for r in rows] == [2, 4, 2, 4]
    assert all(0 <= r["personalized_acc_mean"] <= 1 and 0 <= r["global_acc"] <= 1 for r in rows)
    assert all(0 <= r["deployed_acc_mean"] <= 1 and 0 <= r["finetuned_acc_mean"] <= 1 for r in rows)
    # LotteryFL pruned in round 1 (gate open) and its uplink shrank below FedAvg's dense one.
    # (the gate is strict, accuracy > threshold, so a client at 0% validation accuracy does not prune)
    assert lfl[0]["pruned_clients"] >= 1 and lfl[0]["density_mean"] < 1
    assert lfl[0]["values_bytes_up"] < avg[0]["values_bytes_up"]
    assert lfl[0]["bytes_up"] < avg[0]["bytes_up"]
    # FedAvg is dense both ways: the same weight values travel up and down (configs and metrics differ).
    assert avg[0]["density_mean"] == 1.0 and avg[0]["values_bytes_up"] == avg[0]["values_bytes_down"] > 0
    assert avg[0]["bytes_up"] > avg[0]["values_bytes_up"]
    clients = read_csv(tmp_path / "clients.csv")
    assert len(clients) == 8 and {c["partition_id"] for c in clients} == {0, 1, 2, 3}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["config"]["partition"]["num_clients"] == 4
    for name in ("lotteryfl", "fedavg"):
        s = summary["strategies"][name]
        assert s["rounds"] == 2 and s["failures"] == []
        assert s["bytes_up"] == sum(r["bytes_up"] for r in rows if r["strategy"] == name)
    # `fedlottery report` on the run: one table row per strategy and the three plots.
    text = report([tmp_path], tmp_path / "plots")
    assert text.count(f"| {tmp_path.name} |") == 2
    for png in ("accuracy_vs_round.png", "accuracy_vs_mb.png", "client_densities.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000


def test_unreachable_ray_cluster_fails_fast_with_a_clear_error(tmp_path, tiny_config):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray runtime is already up in this process")
    cfg = _config(tiny_config)
    cfg.simulation.ray_address = "127.0.0.1:1"  # an explicit address where nothing listens
    with pytest.raises(RuntimeError, match="cannot reach the Ray cluster"):
        run_federated(cfg, tmp_path, log=lambda _: None)
    assert not (tmp_path / "rounds.csv").exists()


class RecordingGrid:
    """A Grid that keeps every message the ServerApp really sends and every reply it gets."""

    def __init__(self, grid):
        self._grid = grid
        self.calls: list[tuple[list, list]] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        self.calls.append((messages, replies))
        return replies


def _message_bytes(message) -> int:
    """Flower's own count: count_bytes() of every record the message carries, plus its key."""
    return sum(record.count_bytes() + len(key) for key, record in message.content.items())


@pytest.mark.slow
def test_every_strategy_runs_and_the_meter_equals_the_bytes_really_sent(tmp_path, monkeypatch, tiny_config):
    from fedlottery.runtime import server_app
    from strategies import available

    recorded: list[RecordingGrid] = []
    real_run = server_app.run_experiment

    def recording_run(grid, *args, **kwargs):
        recorded.append(RecordingGrid(grid))
        return real_run(recorded[-1], *args, **kwargs)

    monkeypatch.setattr(server_app, "run_experiment", recording_run)
    cfg = _config(tiny_config)
    cfg.strategies = list(available())  # every strategy: the meter must equal the bytes sent for each
    cfg.rounds = 3  # FLASH hunts in round 1
    cfg.evaluation.every = 2
    cfg.model.name = "cnn_digits_bn"
    cfg.strategy_options = {
        "lotteryfl": {"acc_threshold": 0.0, "prune_rate": 0.5, "target_density": 0.5},
        "fedltn": {"acc_threshold": 0.0, "target_density": 0.5},
        "cell": {"threshold": 0.05},
        "flash-spdst": {"density": 0.3, "hunt_fraction": 0.5, "hunt_epochs": 1},
        "flash-jmwst": {"density": 0.3, "hunt_fraction": 0.5, "hunt_epochs": 1},
        "hetero-flash": {"density": 0.3, "hunt_fraction": 0.5, "hunt_epochs": 1},
    }
    summary = run_federated(cfg, tmp_path, log=lambda _: None)
    assert all(s["failures"] == [] for s in summary["strategies"].values()), summary
    rows = read_csv(tmp_path / "rounds.csv")
    assert [r["strategy"] for r in rows[::3]] == cfg.strategies
    calls = recorded[0].calls[1:]  # the first call is the setup query
    for row in rows:  # calls come in order: each round's training, then its evaluation when due
        messages, replies = calls.pop(0)
        assert all(m.metadata.message_type == "train" for m in messages)
        # local training sends nothing in a real deployment: its meter counts 0 (strategies.base `communicates`)
        counted = available()[row["strategy"]].communicates
        assert row["bytes_down"] == (sum(_message_bytes(m) for m in messages) if counted else 0)
        assert row["bytes_up"] == (sum(_message_bytes(r) for r in replies) if counted else 0)
        if row["personalized_acc_mean"] is not None:
            messages, replies = calls.pop(0)
            assert row["eval_bytes"] == sum(_message_bytes(m) for m in messages + replies)
    assert calls == []
    by = {name: [r for r in rows if r["strategy"] == name] for name in cfg.strategies}
    # FLASH: round 1 hunts on 2 of 4 clients and uploads no weights; afterwards one mask at density 0.3.
    for name in ("flash-spdst", "flash-jmwst"):
        assert by[name][0]["values_bytes_up"] == 0 and by[name][-1]["density_mean"] == pytest.approx(0.3, abs=2e-3)
    # CELL broadcasts: every client gets the same model, so one broadcast costs far less than the unicasts.
    cell = by["cell"][0]
    assert cell["bytes_down_broadcast"] < cell["bytes_down"]
    assert by["lotteryfl"][0]["bytes_down_broadcast"] <= by["lotteryfl"][0]["bytes_down"]
    # FedLTN never sends BatchNorm tensors: its downlink values are below FedAvg's dense ones in round 1.
    assert by["fedltn"][0]["bytes_down"] < by["fedavg"][0]["bytes_down"]


@pytest.mark.slow
def test_fedbn_local_fedpm_and_fedselect_run_in_a_real_simulation(tmp_path):
    from fedlottery.runs.results import read_csv
    from fedlottery.runtime.simulation import run_federated

    cfg = small_config(["fedbn", "local", "fedpm", "fedselect"], clients_per_round=2,
                       evaluation={"every": 2, "deployed": True, "finetune_epochs": 1},
                       strategy_options={"fedselect": {"grow_rate": 0.5}})
    summary = run_federated(cfg, tmp_path, log=lambda _: None)
    assert all(s["failures"] == [] for s in summary["strategies"].values()), summary
    rows = read_csv(tmp_path / "rounds.csv")
    by = {name: [r for r in rows if r["strategy"] == name] for name in cfg.strategies}
    assert all(len(by[name]) == 3 for name in by)
    assert all(r["clients"] == 2 and r["failed_train_clients"] == 0 for r in rows)
    assert all(r.get("failed_eval_clients") in (0, None) for r in rows)
    for row in by["local"]:  # a local-only deployment sends nothing
        assert row["bytes_up"] == row["bytes_down"] == row["bytes_down_broadcast"] == 0
        assert row["values_bytes_up"] == row["values_bytes_down"] == 0
    assert summary["strategies"]["local"]["bytes_up"] == summary["strategies"]["local"]["bytes_down"] == 0
    # FedBN sends no BatchNorm tensor, so its messages are lighter than theta_g's full size would be
    assert 0 < by["fedbn"][0]["bytes_up"] and by["fedbn"][0]["values_bytes_up"] == by["fedbn"][0]["values_bytes_down"]
    # FedPM: no weight values go up at all (a mask per client), below 1 bit per prunable weight
    n = sum(t.numel() for name, t in clone_state(build_model("cnn_digits_bn", (1, 8, 8), 10)).items()
            if name in prunable_names(build_model("cnn_digits_bn", (1, 8, 8), 10)))
    for row in by["fedpm"]:
        assert row["values_bytes_up"] == 0
        assert row["bytes_up"] < 2 * (n / 8) + 4096 and row["bytes_down"] > 2 * 4 * n
    # FedSelect: half of each layer's weights turn personal at a client's first round, and never travel again
    assert by["fedselect"][0]["values_bytes_up"] < 0.6 * by["fedbn"][0]["values_bytes_up"]
    assert by["fedselect"][-1]["density_mean"] < 1.0
    for name in cfg.strategies:
        final = by[name][-1]
        assert 0 <= final["personalized_acc_mean"] <= 1 and 0 <= final["deployed_acc_mean"] <= 1
        assert math.isfinite(final["finetuned_acc_mean"])
