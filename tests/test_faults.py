"""Seeded fault injection through a real Flower + Ray run: every injected fault is counted, exactly, with a
one-line cause, and the run completes."""
import pytest

from fedlottery.config import FederatedConfig, from_dict
from fedlottery.runtime.faults import EVAL_FAULTS, TRAIN_FAULTS, draw, faults_of, injected
from fedlottery.runs.results import read_csv, read_json, sampled_ids
from fedlottery.schedule import scheduled_clients
from fedlottery.runtime.simulation import run_federated


def test_draws_are_fixed_by_their_arguments_and_uniform():
    values = [draw(0, r, p, "nan") for r in range(1, 50) for p in range(40)]
    assert values == [draw(0, r, p, "nan") for r in range(1, 50) for p in range(40)]
    assert 0.45 < sum(values) / len(values) < 0.55 and min(values) >= 0 and max(values) < 1
    assert draw(1, 1, 0, "nan") != draw(0, 1, 0, "nan")
    assert draw(0, 1, 0, "nan") != draw(0, 1, 0, "late")  # each kind its own draw


def test_probability_zero_never_and_one_always_injects():
    faults = from_dict(FederatedConfig, {"faults": {"nan": 1.0}}).faults
    assert all(injected(faults, 0, r, p, "nan") for r in range(5) for p in range(5))
    assert not any(injected(faults, 0, r, p, "late") for r in range(5) for p in range(5))


@pytest.mark.slow
def test_injected_faults_are_counted_exactly_and_the_run_completes(tmp_path, tiny_config):
    cfg = from_dict(FederatedConfig, tiny_config(
        # seed 3: under the paired fault draws (seed, round, partition, kind) its faults include every cause below
        seed=3, strategies=["fedavg", "lotteryfl"], rounds=4, clients_per_round=4,
        partition={"num_clients": 6, "shard_size": 30},
        evaluation={"every": 2},
        faults={"train_crash": 0.1, "late": 0.1, "corrupt": 0.1, "nan": 0.1, "lie_examples": 0.1, "eval_crash": 0.3},
        simulation={"round_timeout": 8.0},
    ))
    run_federated(cfg, tmp_path, log=lambda _: None)
    rows = read_csv(tmp_path / "rounds.csv")
    summary = read_json(tmp_path / "summary.json")
    total_injected = 0
    for row in rows:
        rnd, name = row["round"], row["strategy"]
        sampled = sampled_ids(row["sampled"])
        assert sampled == scheduled_clients(cfg.seed, rnd, range(6), 4)  # the paired schedule, every strategy
        faulty = [p for p in sampled if faults_of(cfg.faults, cfg.seed, rnd, p, TRAIN_FAULTS)]
        assert row["failed_train_clients"] == len(faulty), (name, rnd, faulty)
        assert row["clients"] == 4 - len(faulty)
        total_injected += len(faulty)
        if row["evaluated_clients"] is not None:
            crashed = [p for p in range(6) if faults_of(cfg.faults, cfg.seed, rnd, p, EVAL_FAULTS)]
            assert row["failed_eval_clients"] == len(crashed)
            assert row["evaluated_clients"] == 6 - len(crashed)
            total_injected += len(crashed)
    assert total_injected >= 4  # the seed injects a fair number of faults of several kinds
    failures = [line for s in summary["strategies"].values() for line in s["failures"]]
    assert len(failures) == total_injected
    assert all("\n" not in line and "\x1b" not in line and len(line) < 400 for line in failures)
    causes = " ".join(failures)
    for cause in ("injected fault", "non-finite", "num-examples", "deadline"):
        assert cause in causes, causes
    assert (tmp_path / "failures.log").read_text().count("round ") >= total_injected


def test_tables_flag_an_evaluation_that_missed_clients():
    from fedlottery.runs.report import comparison_table

    s = dict(personalized_acc_final=0.5, personalized_acc_std=0.1, evaluated_clients_final=19, clients=20,
             paper_metric_best_of_rounds=0.6, global_acc_final=None, density_mean_final=1.0, bytes_up=1,
             bytes_down=1, values_bytes_up=1, wall_s=1)
    assert "(19/20)" in comparison_table([("run", {"strategies": {"fedavg": s}})])
    assert "(20/20)" not in comparison_table([("run", {"strategies": {"fedavg": {**s, "evaluated_clients_final": 20}}})])
