"""FedSelect: the mask marks the shared weights; the rest are each client's own. The growth step picks the
weights local training moved most, personal entries never travel and survive between rounds on the client,
and the server averages each shared entry over the clients that share it."""
import json

import pytest
import torch

import fedlottery.runtime.client_app as client_app
from fedlottery.comm import unpack_state
from fedlottery.config import to_dict
from fedlottery.models import build_model
from fedlottery.training import evaluate

from fedlottery.aggregation import ClientWeights
from fedlottery.config import from_dict
from fedlottery.errors import ConfigError
from fedlottery.sparsity import Mask
from strategies.base import Reply
from strategies.fedselect import FedSelectOptions, FedSelectStrategy, grow_personal
from federation_helpers import Federation, small_config


def test_growth_moves_the_largest_changes_out_of_the_shared_mask():
    shared = Mask({"w": torch.tensor([True, True, True, True, True, False, True, True, True, True])})
    change = {"w": torch.tensor([0.5, -0.9, 0.1, 0.0, 0.3, 5.0, -0.2, 0.05, 0.7, 0.01])}
    grown = grow_personal(shared, change, rate=0.34, max_personal=0.9)  # 0.34 x 9 shared = 3 entries
    # the three largest |change| among the shared entries (-0.9, 0.7, 0.5) turn personal; entry 5 already was
    assert grown["w"].tolist() == [False, False, True, True, True, False, True, True, False, True]


def test_growth_stops_at_max_personal():
    shared = Mask.ones({"w": (100,)})
    change = {"w": torch.arange(100, dtype=torch.float32)}
    for _ in range(30):
        shared = grow_personal(shared, change, rate=0.5, max_personal=0.8)
    assert shared.num_kept() == 20
    assert shared["w"][:20].all()  # the 20 that moved least stay shared


def test_options_are_checked():
    with pytest.raises(ConfigError, match="max_personal"):
        from_dict(FedSelectOptions, {"max_personal": 1.0}, "strategy_options.fedselect")
    with pytest.raises(ConfigError, match="grow_rate"):
        from_dict(FedSelectOptions, {"grow_rate": 0}, "strategy_options.fedselect")


def test_server_averages_each_shared_entry_over_its_sharers_only(make_setup):
    setup = make_setup("mlp_digits")
    strategy = FedSelectStrategy(setup)
    name = setup.prunable[0]
    before = strategy.global_state[name].clone()
    ones = Mask.ones({n: setup.theta0[n].shape for n in setup.prunable})
    half = ones.copy()
    half[name].view(-1)[: half[name].numel() // 2] = False  # client 1 holds the first half personally
    a = {n: torch.full_like(t, 1.0) for n, t in setup.theta0.items()}
    b = {n: torch.full_like(t, 3.0) for n, t in setup.theta0.items()}
    nobody = ones.copy()
    nobody[name].view(-1)[:3] = False
    strategy.aggregate(1, [Reply(0, ClientWeights(a, nobody, 10), 10, {}),
                           Reply(1, ClientWeights(b, half, 10), 10, {})])
    flat = strategy.global_state[name].view(-1)
    assert torch.equal(flat[:3], before.view(-1)[:3])  # personal to both uploaders: unchanged
    assert torch.all(flat[3: half[name].numel() // 2] == 1.0)  # shared by client 0 only
    assert torch.all(flat[half[name].numel() // 2:] == 2.0)  # shared by both: their mean


def test_personal_entries_stay_home_and_survive_between_rounds(tmp_path, flower_run):
    cfg = small_config(["fedselect"], evaluation={"deployed": False},
                       strategy_options={"fedselect": {"grow_rate": 0.3, "max_personal": 0.9}})
    fed = Federation(tmp_path, "fedselect", cfg)
    prunable, bn = fed.setup.prunable, fed.setup.batchnorm
    _, replies = fed.train(1)
    kept = {pid: fed.stored(pid) for pid in range(4)}
    for pid in range(4):
        shared = fed.strategy.masks[pid]
        assert 0.69 < shared.density() < 0.71  # one growth step of 0.3
        assert kept[pid].trained, "the client keeps its trained weights even with evaluation.deployed off"
        assert set(kept[pid].personal) == set(bn)  # personal BatchNorm
    for reply in replies:  # up: prunable values only under the (new) shared mask, no BatchNorm
        assert not set(reply.content["model"]) & set(bn)
    messages, _ = fed.train(2)
    for message in messages:
        pid = int(message.content["config"]["partition-id"])
        shared = kept[pid].mask
        # down: theta_g under the shared mask only; the client's own entries come from what it kept
        assert not set(message.content["model"]) & set(bn)
        state, _ = unpack_state(message.content["model"], fed.setup.theta0, shared, set(prunable))
        for n in prunable:
            assert torch.all(state[n][~shared[n]] == 0)
    # what a client evaluates: theta_g on shared entries, its own trained values on the personal ones
    results = fed.evaluate(2)
    assert all(0.0 <= r["test-acc"] <= 1.0 for r in results.values())
    for pid in range(4):
        held = fed.stored(pid)
        assert held.mask.density() < 0.5  # two growth steps
        theta_g = fed.strategy.global_state
        model = build_model(cfg.model.name, (1, 8, 8), 10)
        model.load_state_dict({**theta_g, **{n: torch.where(held.mask[n], theta_g[n], held.trained[n])
                                             for n in prunable}, **held.personal})
        data = client_app.client_data(json.dumps(to_dict(cfg)), pid, torch.device("cpu"))
        assert results[pid]["test-acc"] == pytest.approx(evaluate(model, data.test)[1])


def test_a_client_round_starts_from_its_own_personal_values(tmp_path, flower_run, monkeypatch):
    cfg = small_config(["fedselect"], strategy_options={"fedselect": {"grow_rate": 0.5}})
    fed = Federation(tmp_path, "fedselect", cfg)
    started = {}
    real = FedSelectStrategy.client_train.__func__

    def spy(cls, task):
        started[(task.server_round, task.data.partition_id)] = {n: t.detach().clone()
                                                                for n, t in task.model.state_dict().items()}
        return real(cls, task)

    monkeypatch.setattr(FedSelectStrategy, "client_train", classmethod(spy))
    fed.train(1)
    kept = {pid: fed.stored(pid) for pid in range(4)}
    theta_g = {n: t.clone() for n, t in fed.strategy.global_state.items()}
    fed.train(2)
    for pid in range(4):
        mask, trained = kept[pid].mask, kept[pid].trained
        for n in fed.setup.prunable:
            got = started[(2, pid)][n]
            assert torch.equal(got[~mask[n]], trained[n][~mask[n]])  # its own values where personal
            assert torch.equal(got[mask[n]], theta_g[n][mask[n]])  # theta_g where shared
    # each client's personal values are its own: two clients differ where both are personal
    n = fed.setup.prunable[0]
    both = ~kept[0].mask[n] & ~kept[1].mask[n]
    assert both.any() and not torch.equal(kept[0].trained[n][both], kept[1].trained[n][both])
