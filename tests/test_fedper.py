"""FedPer: the whole model trains, only the body travels and is averaged, each client keeps its own head."""
import json

import pytest
import torch

import fedlottery.runtime.client_app as client_app
from fedlottery.aggregation import ClientWeights
from fedlottery.config import to_dict
from fedlottery.models import build_model, clone_state
from fedlottery.training import evaluate
from strategies.base import Reply
from strategies.fedper import FedPerOptions, FedPerStrategy

from federation_helpers import Federation, small_config


def _reply(pid, state, n):
    return Reply(pid, ClientWeights(state, None, n), n, {})


def test_fedper_averages_the_body_and_leaves_the_head_bit_for_bit(make_setup):
    setup = make_setup("cnn_digits_bn")
    strategy = FedPerStrategy(setup, FedPerOptions(weighted=True))
    assert strategy.personal == frozenset(setup.head)
    before = {n: t.clone() for n, t in strategy.global_state.items()}
    states = [{k: (v + s if v.is_floating_point() else v) for k, v in setup.theta0.items()} for s in (1.0, 3.0)]
    strategy.aggregate(1, [_reply(0, states[0], 10), _reply(1, states[1], 30)])
    for name, tensor in strategy.global_state.items():
        if name in setup.head:
            assert torch.equal(tensor, before[name]), name
        elif tensor.is_floating_point():
            assert torch.allclose(tensor, (10 * states[0][name] + 30 * states[1][name]) / 40), name


def test_fedper_client_trains_the_whole_model(make_task):
    task = make_task(FedPerOptions())
    start = clone_state(task.model)
    update = FedPerStrategy.client_train(task)
    assert all(not torch.equal(update.state[n], start[n]) for n, _ in task.model.named_parameters())


def test_fedper_heads_never_travel_and_each_client_is_evaluated_with_its_own(tmp_path, flower_run):
    cfg = small_config(["fedper"])
    fed = Federation(tmp_path, "fedper", cfg)
    head, theta0 = fed.setup.head, fed.setup.theta0
    body = set(theta0) - set(head)
    kept = {}
    for rnd in (1, 2):
        messages, replies = fed.train(rnd)
        for packet in [m.content for m in messages] + [r.content for r in replies]:
            assert set(packet["model"]) == body  # the head goes neither way
        assert all(torch.equal(fed.strategy.global_state[n], theta0[n]) for n in head)
        kept[rnd] = {pid: fed.stored(pid).personal for pid in range(4)}
    for pid in range(4):
        assert set(kept[2][pid]) == set(head)
        assert not torch.equal(kept[2][pid][head[0]], kept[1][pid][head[0]])  # trained again from its own
    assert not torch.equal(kept[2][0][head[0]], kept[2][1][head[0]])  # each client its own head
    results = fed.evaluate(2)
    config_json = json.dumps(to_dict(cfg))
    for pid in (0, 3):  # the global body with the client's own head
        model = build_model(cfg.model.name, (1, 8, 8), 10)
        model.load_state_dict({**fed.strategy.global_state, **kept[2][pid]})
        data = client_app.client_data(config_json, pid, torch.device("cpu"))
        assert results[pid]["test-acc"] == pytest.approx(evaluate(model, data.test)[1])
