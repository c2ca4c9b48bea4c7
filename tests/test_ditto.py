"""Ditto: the upload is FedAvg's own; each client's personal model v_k trains on f_k(v) + λ/2·||v − w^t||², stays in
its client state, and is what the client is evaluated on (FederatedStrategy.evaluation_state)."""
import copy
import json

import pytest
import torch

import fedlottery.runtime.client_app as client_app
from fedlottery.config import to_dict
from fedlottery.errors import ConfigError
from fedlottery.models import build_model, clone_state
from fedlottery.training import evaluate, train
from strategies.ditto import DittoOptions, DittoStrategy
from strategies.fedavg import FedAvgStrategy

from federation_helpers import Federation, small_config


def _distance(a, b):
    return sum(float((a[n] - b[n]).pow(2).sum()) for n in a if a[n].is_floating_point()) ** 0.5


def test_ditto_uploads_fedavgs_update(make_task):
    ditto = DittoStrategy.client_train(make_task(DittoOptions(lam=0.5)))
    fedavg = FedAvgStrategy.client_train(make_task(None))
    assert ditto.upload is None and ditto.keep  # the trained w goes up; v_k stays
    assert all(torch.equal(ditto.state[n], fedavg.state[n]) for n in fedavg.state)


def test_ditto_personal_model_is_pulled_towards_the_received_global_model_by_lambda(make_task):
    received = clone_state(make_task(None).model)
    keep = {lam: DittoStrategy.client_train(make_task(DittoOptions(lam=lam))).keep for lam in (0.0, 1.0, 10.0)}
    gaps = {lam: _distance(v, received) for lam, v in keep.items()}
    assert gaps[10.0] < 0.2 * gaps[0.0] and gaps[10.0] < gaps[1.0] < gaps[0.0]  # large λ: v ≈ w^t


def test_ditto_pulls_towards_the_global_model_received_not_towards_where_v_started(make_task):
    received = clone_state(make_task(None).model)
    torch.manual_seed(7)
    own = clone_state(build_model("mlp_digits", (1, 8, 8), 10))  # a v_k kept from an earlier round, far from w^t
    v = DittoStrategy.client_train(make_task(DittoOptions(lam=10.0), kept=own)).keep
    assert _distance(v, received) < 0.2 * _distance(own, received) and _distance(v, received) < _distance(v, own)


def test_ditto_with_lambda_zero_is_plain_local_training_from_its_own_model(make_task):
    torch.manual_seed(7)
    own = clone_state(build_model("mlp_digits", (1, 8, 8), 10))  # a v_k kept from an earlier round
    update = DittoStrategy.client_train(make_task(DittoOptions(lam=0.0, personal_epochs=3), kept=own))
    task = make_task(None)  # the same task, by hand: FedAvg's update, then plain training of v_k
    personal = copy.deepcopy(task.model)
    personal.load_state_dict(own)
    FedAvgStrategy.client_train(task)
    train(personal, task.data.train, task.local.as_training(), task.generator, epochs=3)
    assert all(torch.equal(update.keep[n], t) for n, t in clone_state(personal).items())


def test_ditto_options_are_checked():
    for bad, key in ((DittoOptions(lam=-0.1), "lam"), (DittoOptions(lam=float("nan")), "lam"),
                     (DittoOptions(personal_epochs=0), "personal_epochs")):
        with pytest.raises(ConfigError, match=f"strategy_options.ditto.{key}: must be"):
            bad.validate("strategy_options.ditto")


def test_ditto_uplink_is_fedavgs_and_clients_are_evaluated_on_their_personal_model(tmp_path, flower_run):
    cfg = small_config(["ditto", "fedavg"], clients_per_round=2, local={"lr": 0.05, "epochs": 1})
    ditto, fedavg = Federation(tmp_path / "d", "ditto", cfg), Federation(tmp_path / "f", "fedavg", cfg)
    _, replies = ditto.train(1)
    _, plain = fedavg.train(1)
    for mine, theirs in zip(replies, plain):  # the same clients, bit for bit the same upload
        assert mine.content["model"].keys() == theirs.content["model"].keys()
        assert all(mine.content["model"][n].data == theirs.content["model"][n].data for n in mine.content["model"])
    assert all(torch.equal(ditto.strategy.global_state[n], fedavg.strategy.global_state[n])
               for n in fedavg.strategy.global_state)
    sampled = {pid for pid in range(4) if ditto.strategy.state_version[pid] == 1}
    assert len(sampled) == 2
    results = ditto.evaluate(1)
    config_json = json.dumps(to_dict(cfg))
    for pid in range(4):
        kept = ditto.stored(pid).kept
        assert bool(kept) == (pid in sampled)  # a v_k for every client that trained, none for the others
        model = build_model(cfg.model.name, (1, 8, 8), 10)
        model.load_state_dict(kept or ditto.strategy.global_state)  # before its first round: the global model
        data = client_app.client_data(config_json, pid, torch.device("cpu"))
        assert results[pid]["test-acc"] == pytest.approx(evaluate(model, data.test)[1])
    pid = min(sampled)
    assert _distance(ditto.stored(pid).kept, ditto.strategy.global_state) > 0  # v_k is not w
