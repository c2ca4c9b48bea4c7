"""LotteryFL's client procedure (gate, prune by downloaded weights, rewind) and server bookkeeping."""
import math

import torch

from fedlottery.config import LocalTrainingConfig
from fedlottery.models import build_model, clone_state, prunable_names
from fedlottery.sparsity import Mask, magnitude_prune
from strategies.base import ClientData, ClientTask, Reply, ServerSetup
from strategies.fedavg import FedAvgStrategy
from strategies.lotteryfl import LotteryFLOptions, LotteryFLStrategy
from fedlottery.aggregation import ClientWeights


def _data(n, seed, label_shift=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.flatten(1)[:, :2].argmax(1) + label_shift).long()  # an easy two-class problem
    return x, y


def _task(options, round_=1, downloaded=None, mask=None, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp_digits", (1, 8, 8), 10)
    theta0 = clone_state(model)
    if downloaded is not None:
        model.load_state_dict(downloaded)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = mask or Mask.ones_like({n: params[n] for n in names})
    data = ClientData(0, _data(128, 1), _data(64, 2), _data(64, 3))
    local = LocalTrainingConfig(lr=0.05, epochs=2, batch_size=32)
    return ClientTask(model, mask, theta0, data, local, options, torch.Generator().manual_seed(0), round_)


def _trained_state(seed=0):
    """Weights that solve the task (so the validation gate opens)."""
    task = _task(LotteryFLOptions(acc_threshold=0.0, target_density=0.99), seed=seed)
    FedAvgStrategy.client_train(task)
    return clone_state(task.model)


def test_gate_closed_means_no_pruning():
    task = _task(LotteryFLOptions(acc_threshold=0.99))  # untrained net: accuracy far below 0.99
    update = LotteryFLStrategy.client_train(task)
    assert update.metrics["pruned"] == 0.0 and update.mask.density() == 1.0


def test_gate_open_prunes_by_downloaded_weights_and_rewinds_to_theta0():
    downloaded = _trained_state()
    task = _task(LotteryFLOptions(acc_threshold=0.3, prune_rate=0.2, target_density=0.1),
                 downloaded=downloaded)
    task.local.epochs = 1
    theta0 = {k: v.clone() for k, v in task.theta0.items()}
    expected = magnitude_prune(task.mask, {n: downloaded[n] for n in task.mask}, 0.2, target_density=0.1)
    # Capture the weights training starts from: they must be theta_0 under the new mask.
    starts = {}
    from strategies import lotteryfl

    real_train = lotteryfl.train

    def spy(model, *args, **kwargs):
        starts.update(clone_state(model))
        return real_train(model, *args, **kwargs)

    lotteryfl.train = spy
    try:
        update = LotteryFLStrategy.client_train(task)
    finally:
        lotteryfl.train = real_train
    assert update.metrics["gate-acc"] > 0.3 and update.metrics["pruned"] == 1.0
    assert update.mask == expected
    for name, keep in update.mask.items():
        n = keep.numel()
        assert int(keep.sum()) == n - math.floor(0.2 * n + 0.5)  # output layer too, same rate
        assert torch.equal(starts[name][keep], theta0[name][keep])  # survivors rewound
        assert torch.count_nonzero(starts[name][~keep]) == 0
        assert torch.count_nonzero(update.state[name][~keep]) == 0  # still zero after training
    bias = [k for k in theta0 if k.endswith("bias")][0]
    assert torch.equal(starts[bias], theta0[bias])  # biases rewound as well


def test_rewind_global_keeps_downloaded_weights():
    downloaded = _trained_state()
    task = _task(LotteryFLOptions(acc_threshold=0.3, rewind="global"), downloaded=downloaded)
    starts = {}
    from strategies import lotteryfl

    real_train = lotteryfl.train
    lotteryfl.train = lambda model, *a, **k: starts.update(clone_state(model)) or real_train(model, *a, **k)
    try:
        update = LotteryFLStrategy.client_train(task)
    finally:
        lotteryfl.train = real_train
    for name, keep in update.mask.items():
        assert torch.equal(starts[name][keep], downloaded[name][keep])


def test_target_density_reached_exactly_then_no_more_pruning():
    state = _trained_state()
    mask = None
    for _ in range(15):
        task = _task(LotteryFLOptions(acc_threshold=0.0, target_density=0.3, rewind="global"),
                     downloaded=state, mask=mask)
        task.local.epochs = 1
        update = LotteryFLStrategy.client_train(task)
        mask, state = update.mask, update.state
    assert mask.num_kept() == math.ceil(0.3 * mask.numel())


def test_server_keeps_masks_per_partition_and_aggregates_over_holders():
    torch.manual_seed(0)
    model = build_model("mlp_digits", (1, 8, 8), 10)
    theta0, names = clone_state(model), prunable_names(model)
    setup = ServerSetup(theta0, names, {0: 100, 1: 101, 2: 102}, 2, 0, LocalTrainingConfig())
    server = LotteryFLStrategy(setup, LotteryFLOptions())
    sample = server.sample(1)
    assert len(sample) == 2 and sample == LotteryFLStrategy(setup, LotteryFLOptions()).sample(1)
    half = Mask({n: torch.arange(theta0[n].numel()).reshape(theta0[n].shape) % 2 == 0 for n in names})
    ones = {k: torch.ones_like(v) for k, v in theta0.items()}
    twos = {k: 2 * torch.ones_like(v) for k, v in theta0.items()}
    half.apply_(twos)
    server.aggregate(1, [Reply(0, ClientWeights(ones, None), 10, {}), Reply(1, ClientWeights(twos, half), 10, {})])
    w = server.global_state[names[0]].reshape(-1)
    assert w[0] == 1.5 and w[1] == 1.0  # kept by both: mean; kept by the dense client only: its value
    personal = server.personal_state(2)
    assert torch.equal(personal[names[0]], server.global_state[names[0]])  # partition 2 still dense
