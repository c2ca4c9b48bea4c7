"""Live tracking: a real run with `tracking.tensorboard` writes TensorBoard event files whose scalars, read back
with TensorBoard's own reader, equal rounds.csv; a resumed strategy does not repeat its rounds there."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedlottery.errors import ConfigError
from fedlottery.runs.tracking import Tracker

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is in the test extra")


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_rows_become_scalars_per_strategy_and_seed(tmp_path):
    tracker = Tracker(str(tmp_path / "tb"), seed=4)
    for rnd in (1, 2, 3):
        tracker.log({"round": rnd, "strategy": "fedavg", "seed": 4, "sampled": "1 2", "bytes_up": 100 * rnd,
                     "personalized_acc_mean": None if rnd < 3 else 0.5, "wall_s": 0.1})
    tracker.close()
    scalars = _scalars(tmp_path / "tb" / "fedavg" / "seed4")
    assert scalars["bytes_up"] == {1: 100.0, 2: 200.0, 3: 300.0}
    assert scalars["personalized_acc_mean"] == {3: 0.5}
    assert "round" not in scalars and "seed" not in scalars and "sampled" not in scalars


def test_a_resumed_strategy_shows_each_round_once(tmp_path):
    first = Tracker(str(tmp_path), seed=0)
    for rnd in (1, 2, 3):
        first.log({"round": rnd, "strategy": "lotteryfl", "bytes_up": rnd})
    first.close()  # killed after round 3; its checkpoint holds round 2
    resumed = Tracker(str(tmp_path), seed=0)
    for rnd in (3, 4):
        resumed.log({"round": rnd, "strategy": "lotteryfl", "bytes_up": 10 * rnd})
    resumed.close()
    assert _scalars(tmp_path / "lotteryfl" / "seed0")["bytes_up"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}


def test_no_directory_means_no_files(tmp_path):
    tracker = Tracker(None, seed=0)
    tracker.log({"round": 1, "strategy": "fedavg", "bytes_up": 1})
    assert not any(tmp_path.iterdir())


def test_a_missing_tensorboard_is_one_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"^tracking\.tensorboard: .*pip install 'fedlottery\[tracking\]'"):
        Tracker(str(tmp_path), seed=0)


@pytest.mark.slow
def test_a_real_run_writes_what_rounds_csv_holds(tmp_path):
    from fedlottery.runtime.experiment import experiment_from_dict
    from fedlottery.runtime.simulation import run_federated

    cfg = experiment_from_dict({
        "seed": 2, "strategies": ["fedavg", "lotteryfl"], "rounds": 3, "clients_per_round": 2,
        "data": {"dataset": "digits"}, "model": {"name": "mlp_digits"},
        "partition": {"scheme": "shards", "num_clients": 4, "shard_size": 20, "shards_per_client": 2,
                      "val_fraction": 0.25},
        "local": {"lr": 0.05, "epochs": 1}, "evaluation": {"every": 2},
        "simulation": {"num_cpus": 1, "actors": 1},
        "tracking": {"tensorboard": str(tmp_path / "tb")}})
    run_federated(cfg, tmp_path / "out", log=lambda _: None)
    with (tmp_path / "out" / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    for strategy in cfg.strategies:
        scalars = _scalars(tmp_path / "tb" / strategy / f"seed{cfg.seed}")
        mine = [r for r in rows if r["strategy"] == strategy]
        assert scalars["bytes_up"] == {int(r["round"]): float(r["bytes_up"]) for r in mine}
        evaluated = {int(r["round"]): float(r["personalized_acc_mean"]) for r in mine if r["personalized_acc_mean"]}
        assert evaluated and scalars["personalized_acc_mean"] == pytest.approx(evaluated)
