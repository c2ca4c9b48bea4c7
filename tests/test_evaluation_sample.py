"""A sampled evaluation before the last round: seeded, the same for every strategy, never the last round."""
from fedlottery.config import ConfigError, FederatedConfig, from_dict
from fedlottery.runs.report import _setup
from fedlottery.runtime.round_loop import evaluation_clients

import pytest


def _cfg(sample: int, seed: int = 0):
    return from_dict(FederatedConfig, {"seed": seed, "rounds": 10, "evaluation": {"every": 2, "sample": sample}})


def test_a_sample_is_seeded_sized_and_drawn_from_the_population():
    pids = list(range(100))
    drawn = evaluation_clients(_cfg(7), pids, 4)
    assert len(drawn) == len(set(drawn)) == 7 and set(drawn) <= set(pids) and drawn == sorted(drawn)
    assert evaluation_clients(_cfg(7), pids, 4) == drawn  # a resumed run (or the next strategy) draws the same
    assert evaluation_clients(_cfg(7), pids, 6) != drawn  # a fresh sample each evaluation
    assert evaluation_clients(_cfg(7, seed=1), pids, 4) != drawn


def test_the_last_round_and_sample_zero_test_every_client():
    pids = list(range(30))
    assert evaluation_clients(_cfg(7), pids, 10) == pids
    assert evaluation_clients(_cfg(0), pids, 4) == pids
    assert evaluation_clients(_cfg(30), pids, 4) == pids  # a sample as big as the population is the population


def test_a_negative_sample_is_refused_with_its_key():
    with pytest.raises(ConfigError, match="evaluation.sample"):
        _cfg(-1).validate()


def test_plots_say_when_earlier_evaluations_were_sampled():
    config = {"data": {"dataset": "mnist"}, "model": {"name": "lotteryfl_cnn"}, "rounds": 10,
              "evaluation": {"sample": 50}}
    assert "\nevaluations before the last: 50 sampled clients" in _setup(config)
    config["evaluation"]["sample"] = 0
    assert "sampled" not in _setup(config)
