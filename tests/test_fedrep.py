"""FedRep: per round the head trains with the body frozen (E − E_body epochs), then the body with the head frozen
(E_body epochs); the body goes up and is averaged, the head stays on the client."""
import pytest
import torch

import strategies.fedrep as fedrep
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state, head_names
from strategies.fedrep import FedRepOptions, FedRepStrategy

from federation_helpers import Federation, small_config


def _phases(make_task, monkeypatch, model_name, epochs=3, body_epochs=1):
    """Run FedRep's client half, recording the parameters before and after each `train` call (each phase)."""
    phases = []
    real = fedrep.train

    def spy(model, data, cfg, generator, **kw):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = real(model, data, cfg, generator, **kw)
        phases.append((before, {n: p.detach().clone() for n, p in model.named_parameters()}, kw["epochs"]))
        return result

    monkeypatch.setattr(fedrep, "train", spy)
    task = make_task(FedRepOptions(body_epochs=body_epochs), model_name, epochs=epochs)
    update = FedRepStrategy.client_train(task)
    return task, update, phases


@pytest.mark.parametrize("model_name", ["mlp_digits", "cnn_digits_bn"])
def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen(
        make_task, monkeypatch, model_name):
    task, update, phases = _phases(make_task, monkeypatch, model_name, epochs=3, body_epochs=1)
    head = [n for n in head_names(task.model) if n in dict(task.model.named_parameters())]
    body = [n for n, _ in task.model.named_parameters() if n not in head]
    assert len(phases) == 2 and [epochs for *_, epochs in phases] == [2, 1]  # E − E_body, then E_body
    (head_before, head_after, _), (body_before, body_after, _) = phases
    assert all(torch.equal(head_before[n], head_after[n]) for n in body)  # head phase: body weights fixed
    assert all(not torch.equal(head_before[n], head_after[n]) for n in head)  # ... and the head learns
    assert all(torch.equal(body_before[n], body_after[n]) for n in head)  # body phase: head weights fixed
    assert all(not torch.equal(body_before[n], body_after[n]) for n in body)  # ... and the body learns
    assert all(torch.equal(update.state[n], body_after[n]) for n in body_after)  # the update is the result
    assert all(p.requires_grad for p in task.model.parameters())  # nothing left frozen


def test_fedrep_keeps_the_head_home_and_averages_bodies(tmp_path, flower_run):
    fed = Federation(tmp_path, "fedrep", small_config(["fedrep"], local={"lr": 0.05, "epochs": 2}))
    head, theta0 = fed.setup.head, fed.setup.theta0
    assert fed.strategy.personal == frozenset(head)
    messages, replies = fed.train(1)
    for packet in [m.content for m in messages] + [r.content for r in replies]:
        assert set(packet["model"]) == set(theta0) - set(head)
    assert all(torch.equal(fed.strategy.global_state[n], theta0[n]) for n in head)
    kept = {pid: fed.stored(pid).personal for pid in range(4)}
    assert all(not torch.equal(kept[pid][head[0]], theta0[head[0]]) for pid in range(4))
    assert not torch.equal(kept[0][head[0]], kept[1][head[0]])


def test_fedrep_refuses_epochs_that_leave_the_head_nothing(make_setup):
    setup = make_setup()
    setup.local.epochs = 1
    with pytest.raises(ConfigError, match="local.epochs = 1 leaves no epoch for the head.*body_epochs = 1"):
        FedRepStrategy(setup, FedRepOptions())
    with pytest.raises(ConfigError, match="body_epochs: must be >= 1"):
        FedRepOptions(body_epochs=0).validate("strategy_options.fedrep")
