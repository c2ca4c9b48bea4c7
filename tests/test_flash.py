"""FLASH (SPDST, JMWST, hetero): the density hunt, one server mask at the target density, nested levels, personal BN."""
import math

import torch

from fedlottery.aggregation import ClientWeights
from fedlottery.sparsity import Mask
from strategies.base import Reply
from strategies.flash import (
    DENSITY_PREFIX, FlashJMWSTStrategy, FlashOptions, FlashSPDSTStrategy, HeteroFlashStrategy,
)

from federation_helpers import Federation, small_config


def _reply(pid, state, mask, n=10, metrics=None):
    return Reply(pid, ClientWeights(state, mask, n), n, metrics or {})


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


def test_flash_with_personal_bn_never_sends_batchnorm_and_keeps_each_clients_own(tmp_path, flower_run):
    options = {"flash-jmwst": {"density": 0.5, "hunt_fraction": 0.5, "hunt_epochs": 1, "personal_bn": True}}
    fed = Federation(tmp_path, "flash-jmwst", small_config(["flash-jmwst"], strategy_options=options))
    bn, theta0 = fed.setup.batchnorm, fed.setup.theta0
    assert fed.strategy.personal == frozenset(bn)
    for rnd in (1, 2, 3):  # the hunt, then a mask-search round and another
        messages, replies = fed.train(rnd)
        for packet in [m.content for m in messages] + [r.content for r in replies]:
            assert not set(packet["model"]) & set(bn)
        assert all(torch.equal(fed.strategy.global_state[n], theta0[n]) for n in bn)  # never overwritten
    kept = {pid: fed.stored(pid).personal for pid in range(4)}
    assert all(set(kept[pid]) == set(bn) for pid in range(4))
    assert not torch.equal(kept[0][bn[0]], kept[1][bn[0]])  # each client its own statistics
    assert not torch.equal(kept[0][bn[0]], theta0[bn[0]])
