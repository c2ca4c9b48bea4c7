"""FedBABU: the head stays theta_0's (never trained, never sent) while the body trains and is averaged; the
personalised number is the fine-tuned column, whose fine-tuning trains the whole network, head included."""
import torch

import fedlottery.runtime.client_app as client_app
from fedlottery.models import clone_state, head_names
from strategies.fedbabu import FedBABUOptions, FedBABUStrategy

from federation_helpers import Federation, small_config


def test_fedbabu_client_never_moves_the_head_and_trains_the_body(make_task):
    task = make_task(FedBABUOptions(), "cnn_digits_bn")
    start = clone_state(task.model)
    update = FedBABUStrategy.client_train(task)
    params = dict(task.model.named_parameters())
    head = [n for n in head_names(task.model) if n in params]
    assert head and all(torch.equal(update.state[n], task.theta0[n]) for n in head)  # bit for bit theta_0
    assert all(not torch.equal(update.state[n], start[n]) for n in params if n not in head)
    assert all(p.requires_grad for p in params.values())  # the freeze ends with the round


def test_fedbabu_head_never_travels_and_fine_tuning_trains_it(tmp_path, flower_run, monkeypatch):
    cfg = small_config(["fedbabu"], evaluation={"finetune_epochs": 1})
    fed = Federation(tmp_path, "fedbabu", cfg)
    head, theta0 = fed.setup.head, fed.setup.theta0
    messages, replies = fed.train(1)
    for packet in [m.content for m in messages] + [r.content for r in replies]:
        assert set(packet["model"]) == set(theta0) - set(head)
    assert all(torch.equal(fed.stored(pid).personal[n], theta0[n]) for pid in range(4) for n in head)
    tuned = []
    real = client_app.train

    def spy(model, data, cfg, generator, **kw):  # the fine-tuning inside the evaluation
        before = clone_state(model)
        real(model, data, cfg, generator, **kw)
        tuned.append((before, clone_state(model)))

    monkeypatch.setattr(client_app, "train", spy)
    results = fed.evaluate(1)
    assert len(tuned) == 4 and all("finetuned-acc" in r for r in results.values())
    for before, after in tuned:
        assert all(torch.equal(before[n], theta0[n]) for n in head)  # it starts from theta_0's head ...
        assert all(not torch.equal(before[n], after[n]) for n in head)  # ... and fine-tunes it
        body = [n for n in after if n not in head and after[n].is_floating_point()]
        assert all(torch.equal(before[n], fed.strategy.global_state[n]) for n in body)  # on the global body
        assert any(not torch.equal(before[n], after[n]) for n in body)  # which is fine-tuned too
