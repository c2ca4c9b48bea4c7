"""FedLTN: pruning by the trained weights without rewinding, the gate, personal BatchNorm, momentum, jump-start."""
import pytest
import torch

from fedlottery.aggregation import ClientWeights, masked_mean
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask, magnitude_prune
from strategies.base import Reply
from strategies.fedltn import FedLTNOptions, FedLTNStrategy


def _reply(pid, state, mask, n=10, metrics=None):
    return Reply(pid, ClientWeights(state, mask, n), n, metrics or {})


def test_fedltn_prunes_after_training_by_trained_weights_without_rewinding(make_task):
    opts = FedLTNOptions(acc_threshold=0.0, prune_rate=0.2, target_density=0.1)
    task = make_task(opts)
    theta0 = {k: v.clone() for k, v in task.theta0.items()}
    update = FedLTNStrategy.client_train(task)
    trained = clone_state(task.model)
    expected = magnitude_prune(task.mask, {n: trained[n] for n in task.mask}, 0.2, target_density=0.1)
    assert update.mask == expected and update.metrics["pruned"] == 1.0
    for name in update.mask:  # survivors carry their trained values, not theta_0
        keep = update.mask[name]
        assert torch.equal(update.state[name][keep], trained[name][keep])
        assert not torch.equal(update.state[name][keep], theta0[name][keep])
        assert bool((update.state[name][~keep] == 0).all())


def test_fedltn_gate_closed_keeps_the_mask(make_task):
    update = FedLTNStrategy.client_train(make_task(FedLTNOptions(acc_threshold=0.999)))
    assert update.metrics["pruned"] == 0.0 and update.mask.density() == 1.0


def test_fedltn_keeps_batchnorm_personal(make_setup, flower_run):
    setup = make_setup("cnn_digits_bn")
    assert FedLTNStrategy.personal_names(FedLTNOptions(), setup.batchnorm) == frozenset(setup.batchnorm)
    assert FedLTNStrategy.personal_names(FedLTNOptions(personal_bn=False), setup.batchnorm) == frozenset()
    strategy = FedLTNStrategy(setup, FedLTNOptions())
    message = strategy.downlink(0, "train", 1)
    assert not set(message.content["model"]) & set(setup.batchnorm)  # BN never sent down
    before = {n: strategy.global_state[n].clone() for n in setup.batchnorm}
    uploads = []
    for pid in (0, 1):
        state = {k: v + 1.0 if v.is_floating_point() else v for k, v in setup.theta0.items()}
        uploads.append(_reply(pid, state, None))
    strategy.aggregate(1, uploads)
    assert all(torch.equal(strategy.global_state[n], before[n]) for n in setup.batchnorm)


def test_fedltn_server_momentum(make_setup):
    setup = make_setup()
    name = setup.prunable[0]
    beta, lr = 0.5, 0.8
    strategy = FedLTNStrategy(setup, FedLTNOptions(server_momentum=beta, server_lr=lr))
    theta = strategy.global_state[name].clone()
    keep = torch.rand(theta.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    mask = Mask({n: keep if n == name else torch.ones_like(t, dtype=torch.bool)
                 for n, t in setup.theta0.items() if n in setup.prunable})
    state = {k: v + 1.0 for k, v in setup.theta0.items()}
    mask.apply_(state)
    strategy.aggregate(1, [_reply(0, state, mask)])
    delta = masked_mean(setup.theta0, [ClientWeights(state, mask)], setup.prunable)[name] - theta
    assert torch.allclose(strategy.global_state[name], theta + lr * delta)
    assert torch.equal(strategy.global_state[name][~keep], theta[~keep])  # no holder, no velocity yet
    second = strategy.global_state[name].clone()
    strategy.aggregate(2, [_reply(0, state, mask)])
    upload = ClientWeights({name: state[name]}, Mask({name: keep}))
    delta2 = masked_mean({name: second}, [upload], [name])[name] - second
    assert torch.allclose(strategy.global_state[name], second + lr * (beta * delta + delta2), atol=1e-6)


def test_fedltn_jump_start_gives_every_client_the_ticket(make_setup, tmp_path):
    setup = make_setup()
    ticket = Mask({n: torch.rand(setup.theta0[n].shape) > 0.7 for n in setup.prunable})
    ticket.save(tmp_path / "ticket.npz")
    strategy = FedLTNStrategy(setup, FedLTNOptions(jump_start=str(tmp_path / "ticket.npz")))
    assert all(m == ticket for m in strategy.masks.values())
    with pytest.raises(FileNotFoundError, match="jump-start file not found"):
        FedLTNStrategy(setup, FedLTNOptions(jump_start=str(tmp_path / "missing.npz")))
