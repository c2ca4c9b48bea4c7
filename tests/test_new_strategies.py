"""The distinctive rule of each strategy added after LotteryFL: FedLTN, FLASH (SPDST, JMWST, hetero), CELL."""
import math

import pytest
import torch

from fedlottery.aggregation import ClientWeights, masked_mean
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask, magnitude_prune
from strategies.base import Reply
from strategies.cell import CELLOptions, CELLStrategy, cell_gate
from strategies.fedavg import FedAvgOptions, FedAvgStrategy
from strategies.fedltn import FedLTNOptions, FedLTNStrategy
from strategies.flash import (
    DENSITY_PREFIX, FlashJMWSTStrategy, FlashOptions, FlashSPDSTStrategy, HeteroFlashStrategy,
)


def _reply(pid, state, mask, n=10, metrics=None):
    return Reply(pid, ClientWeights(state, mask, n), n, metrics or {})


# ---- FedLTN ------------------------------------------------------------------------------------------------
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


# ---- FLASH -------------------------------------------------------------------------------------------------
def _hunt(strategy, densities_per_client):
    hunters = strategy.sample(1)
    assert len(hunters) == math.ceil(strategy.options.hunt_fraction * len(strategy.setup.node_of))
    assert all(strategy.instructions(p, 1)["phase"] == "hunt" for p in hunters)
    replies = [_reply(p, {}, None, metrics={DENSITY_PREFIX + n: d for n, d in dens.items()})
               for p, dens in zip(hunters, densities_per_client)]
    strategy.aggregate(1, replies)


def _upload(strategy, pid, scale=1.0, mask=None):
    mask = mask or strategy.masks[pid]
    g = torch.Generator().manual_seed(pid)
    state = {k: (v + scale * torch.randn(v.shape, generator=g)) for k, v in strategy.global_state.items()}
    mask.apply_(state)
    return _reply(pid, state, mask)


def test_flash_spdst_one_fixed_mask_at_exactly_the_target_density(make_setup):
    setup = make_setup(clients=10, per_round=3)
    strategy = FlashSPDSTStrategy(setup, FlashOptions(density=0.2, hunt_fraction=0.2))
    names = setup.prunable
    _hunt(strategy, [{n: 0.3 if i == 0 else 0.1 for i, n in enumerate(names)}] * 2)
    first = strategy.masks[0]
    total = sum(m.numel() for m in [first])
    assert first.num_kept() == round(0.2 * total)
    assert all(m == first for m in strategy.masks.values())
    assert strategy.global_state.keys() == setup.theta0.keys()
    assert all(torch.equal(strategy.global_state[k], setup.theta0[k]) for k in setup.theta0)  # restart at theta_0
    for rnd in (2, 3, 4):
        pids = strategy.sample(rnd)
        assert all(strategy.instructions(p, rnd)["phase"] == "train" for p in pids)
        strategy.aggregate(rnd, [_upload(strategy, p) for p in pids])
        assert all(m == first for m in strategy.masks.values())
    global_model = strategy.global_model_state()
    assert all(bool((global_model[n][~first[n]] == 0).all()) for n in names)


def test_flash_rescale_init_restarts_from_theta0_scaled_by_one_over_root_density(make_setup):
    setup = make_setup(clients=10, per_round=3)
    strategy = FlashSPDSTStrategy(setup, FlashOptions(density=0.2, hunt_fraction=0.2, rescale_init=True))
    _hunt(strategy, [{n: 0.3 if i == 0 else 0.1 for i, n in enumerate(setup.prunable)}] * 2)
    densities = strategy.server_mask().layer_densities()
    assert len(set(densities.values())) > 1  # layers at different densities, each scaled by its own
    for name, tensor in strategy.global_state.items():
        expected = setup.theta0[name] / math.sqrt(densities[name]) if name in densities else setup.theta0[name]
        assert torch.allclose(tensor, expected), name


def test_flash_jmwst_server_mask_keeps_the_target_density(make_setup):
    setup = make_setup(clients=6, per_round=3)
    strategy = FlashJMWSTStrategy(setup, FlashOptions(density=0.3, hunt_fraction=0.5, mask_interval=2))
    _hunt(strategy, [{n: 0.3 for n in setup.prunable}] * 3)
    target = round(0.3 * strategy.server_mask().numel())
    before = strategy.server_mask()
    for rnd in (2, 3, 4):
        pids = strategy.sample(rnd)
        search = rnd % 2 == 0
        assert all(strategy.instructions(p, rnd)["phase"] == ("search" if search else "train") for p in pids)
        replies = []
        for p in pids:  # each client moved its mask a little (prune-and-regrow)
            g = torch.Generator().manual_seed(rnd * 10 + p)
            moved = Mask({n: (k ^ (torch.rand(k.shape, generator=g) < 0.05)) for n, k in strategy.masks[p].items()})
            replies.append(_upload(strategy, p, mask=moved if search else None))
        strategy.aggregate(rnd, replies)
        assert strategy.server_mask().num_kept() == target
        assert all(m == strategy.server_mask() for m in strategy.masks.values())
    assert strategy.server_mask() != before


def test_hetero_flash_masks_are_nested_at_their_level_densities(make_setup):
    setup = make_setup(clients=9, per_round=3)
    strategy = HeteroFlashStrategy(setup, FlashOptions(density=0.4, hunt_fraction=0.3, levels=[0.5, 0.75, 1.0]))
    _hunt(strategy, [{n: 0.4 for n in setup.prunable}] * 3)
    for rnd in (2, 3):
        strategy.aggregate(rnd, [_upload(strategy, p) for p in strategy.sample(rnd)])
        levels = strategy.level_masks
        n = levels[-1].numel()
        assert [m.num_kept() for m in levels] == [round(0.4 * f * n) for f in (0.5, 0.75, 1.0)]
        for small, big in zip(levels, levels[1:]):
            assert all(bool((small[k] <= big[k]).all()) for k in small)
        assert sorted({strategy.level_of[p] for p in strategy.masks}) == [0, 1, 2]
        assert all(strategy.masks[p] == levels[strategy.level_of[p]] for p in strategy.masks)


def test_flash_client_hunt_reports_layer_densities_and_keeps_its_mask(make_task):
    opts = FlashOptions(density=0.5, hunt_epochs=2, regrow_steps=3)
    mask0 = Mask({n: torch.rand(t.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                  for n, t in make_task(opts).mask.items()})
    task = make_task(opts, mask=mask0, instructions={"phase": "hunt", "lr": 0.05})
    update = FlashSPDSTStrategy.client_train(task)
    assert not update.send_state and update.mask == mask0
    densities = {k[len(DENSITY_PREFIX):]: v for k, v in update.metrics.items() if k.startswith(DENSITY_PREFIX)}
    kept = sum(densities[n] * mask0[n].numel() for n in mask0)
    assert set(densities) == set(mask0.names()) and round(kept) == mask0.num_kept()
    search = FlashJMWSTStrategy.client_train(make_task(opts, mask=mask0, instructions={"phase": "search", "lr": 0.05}))
    assert search.mask != mask0 and search.mask.num_kept() == mask0.num_kept()


# ---- CELL --------------------------------------------------------------------------------------------------
def test_cell_threshold_decays_on_failure_and_resets_on_success():
    opts = CELLOptions(threshold=0.5, alpha=0.8, gamma=0.2, gamma_max=0.5)
    memory: dict = {}
    assert cell_gate(memory, 0.4, opts) is None and memory["zeta"] == pytest.approx(0.4)
    assert cell_gate(memory, 0.35, opts) is None and memory["zeta"] == pytest.approx(0.32)
    assert cell_gate(memory, 0.35, opts) == pytest.approx(0.2) and memory["zeta"] == 0.5  # success: prune, reset
    assert cell_gate(memory, 0.6, opts) == pytest.approx(0.4)
    assert cell_gate(memory, 0.6, opts) == pytest.approx(0.5)  # capped at gamma_max
    assert cell_gate(memory, 0.6, opts) is None and memory["gamma"] == pytest.approx(0.5)


def test_cell_client_prunes_to_gamma_and_rewinds(make_task):
    task = make_task(CELLOptions(threshold=0.01), memory={})
    update = CELLStrategy.client_train(task)
    assert update.mask.density() == pytest.approx(0.8, abs=1e-3)
    assert task.memory["gamma"] == pytest.approx(0.2) and task.memory["zeta"] == 0.01
    failing = make_task(CELLOptions(threshold=0.999), memory={})
    update = CELLStrategy.client_train(failing)
    assert update.mask.density() == 1.0 and failing.memory["zeta"] == pytest.approx(0.999 * 0.9)


def test_cell_broadcasts_one_dense_model_and_weights_dense_stragglers_by_samples(make_setup, flower_run):
    setup = make_setup()
    strategy = CELLStrategy(setup, CELLOptions())
    name = setup.prunable[0]
    sparse = Mask({n: torch.rand(setup.theta0[n].shape) > 0.5 for n in setup.prunable})
    strategy.masks[1] = sparse
    down = [strategy.downlink(p, "train", 1).content["model"] for p in (0, 1)]
    assert all(a.stype.split(".")[1] == "dense" for a in down[1].values())
    assert all(down[0][k].data == down[1][k].data for k in down[0])
    dense_state = {k: torch.full_like(v, 1.0) for k, v in setup.theta0.items()}
    sparse_state = {k: torch.full_like(v, 3.0) for k, v in setup.theta0.items()}
    sparse.apply_(sparse_state)
    strategy.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    keep = sparse[name]
    assert torch.allclose(strategy.global_state[name][keep], torch.tensor((30 * 1.0 + 10 * 3.0) / 40))
    assert torch.allclose(strategy.global_state[name][~keep], torch.tensor(1.0))  # only the dense client holds it
    fedavg = FedAvgStrategy(setup, FedAvgOptions())
    fedavg.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    plain = CELLStrategy(setup, CELLOptions(aggregation="mean"))
    plain.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    assert torch.allclose(plain.global_state[name], fedavg.global_state[name])


def test_every_strategy_is_listed_in_order():
    from strategies import available

    assert list(available())[:7] == [
        "fedavg", "lotteryfl", "fedltn", "flash-spdst", "flash-jmwst", "hetero-flash", "cell"]
