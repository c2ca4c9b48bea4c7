"""Masked training keeps pruned weights exactly zero (optimizer state included); evaluation and snapshots."""
import pytest
import torch

from fedlottery.config import TrainingConfig
from fedlottery.models import MODELS, build_model, clone_state, count_prunable, prunable_names
from fedlottery.sparsity import Mask, MaskedParameters, magnitude_prune
from fedlottery.training import evaluate, make_optimizer, train


def _toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.flatten(1)[:, :10].argmax(1)).long()
    return x, y


def _pruned_model(seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp_digits", (1, 8, 8), 10)
    params = dict(model.named_parameters())
    names = prunable_names(model)
    mask = magnitude_prune(Mask.ones_like({n: params[n] for n in names}), params, 0.6)
    return model, mask


@pytest.mark.parametrize("optimizer,momentum,wd", [("adam", 0.0, 0.0), ("sgd", 0.9, 1e-3), ("adam", 0.0, 1e-2)])
def test_pruned_weights_stay_zero_through_training(optimizer, momentum, wd):
    model, mask = _pruned_model()
    cfg = TrainingConfig(optimizer=optimizer, lr=0.05, momentum=momentum, weight_decay=wd,
                         batch_size=32, iterations=40, eval_every=10)
    train(model, _toy_data(), cfg, torch.Generator().manual_seed(0), mask=mask, val_data=_toy_data(64, 1))
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0
        assert torch.count_nonzero(params[name][keep]) == int(keep.sum())  # survivors did train


def test_mask_optimizer_state_stops_momentum_reviving_weights():
    """A mask applied under a live optimizer: without clearing state, momentum would move pruned weights."""
    model, mask = _pruned_model()
    cfg = TrainingConfig(optimizer="sgd", lr=0.1, momentum=0.9)
    opt = make_optimizer(model, cfg)
    x, y = _toy_data()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # momentum buffers now hold values for every entry
    masked = MaskedParameters(model, mask)
    masked.mask_optimizer_state(opt)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    masked.mask_grads()
    opt.step()  # no re-apply: state and grads alone must keep them at zero
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0


def test_rewind_restores_theta0_exactly_on_survivors():
    model, mask = _pruned_model()
    theta0 = clone_state(model)
    cfg = TrainingConfig(iterations=20, batch_size=32)
    train(model, _toy_data(), cfg, torch.Generator().manual_seed(0), mask=mask)
    assert not torch.equal(dict(model.named_parameters())["net.1.weight"], theta0["net.1.weight"])
    model.load_state_dict(theta0)
    MaskedParameters(model, mask)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(params[name][keep], theta0[name][keep])
        assert torch.count_nonzero(params[name][~keep]) == 0


def test_training_is_deterministic_in_the_generator():
    results = []
    for _ in range(2):
        model, mask = _pruned_model()
        cfg = TrainingConfig(iterations=30, batch_size=32, eval_every=10)
        r = train(model, _toy_data(), cfg, torch.Generator().manual_seed(3), mask=mask,
                  val_data=_toy_data(64, 1), test_data=_toy_data(64, 2))
        results.append((r.evals, r.test_acc_final, clone_state(model)["net.1.weight"]))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert torch.equal(results[0][2], results[1][2])


def test_early_stop_records_min_validation_loss():
    model, mask = _pruned_model()
    cfg = TrainingConfig(iterations=50, batch_size=32, eval_every=10)
    r = train(model, _toy_data(), cfg, torch.Generator().manual_seed(0), mask=mask,
              val_data=_toy_data(64, 1), test_data=_toy_data(64, 2))
    assert [e["iteration"] for e in r.evals] == [10, 20, 30, 40, 50]
    best = min(r.evals, key=lambda e: e["val_loss"])
    assert r.early_stop_iteration == best["iteration"] and r.val_loss_min == best["val_loss"]
    assert 0 <= r.test_acc_early_stop <= 1


def test_epochs_and_epoch_callback_can_stop():
    model, _ = _pruned_model()
    seen = []
    cfg = TrainingConfig(batch_size=64)
    r = train(model, _toy_data(256), cfg, torch.Generator().manual_seed(0), epochs=5,
              on_epoch=lambda epoch, m: seen.append(epoch) or epoch == 2)
    assert seen == [1, 2] and r.iterations == 8 and r.stopped_early_by_callback


def test_evaluate_accuracy_and_loss():
    model, _ = _pruned_model()
    x, y = _toy_data(100)
    loss, acc = evaluate(model, (x, y), batch_size=7)
    logits = model.eval()(x)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


@pytest.mark.parametrize(
    "name,shape,weights",
    [("lenet_300_100", (1, 28, 28), 266_200), ("lotteryfl_cnn", (1, 28, 28), 21_750),
     ("lenet5", (3, 32, 32), 61_770)],
)
def test_paper_model_sizes(name, shape, weights):
    assert count_prunable(build_model(name, shape, 10)) == weights


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_and_declares_prunable_tensors(name):
    shape = (1, 8, 8) if "digits" in name else (3, 32, 32)
    model = build_model(name, shape, 10, init="kaiming_normal")
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    names = prunable_names(model)
    assert names and all(n.endswith("weight") for n in names)
    params = dict(model.named_parameters())
    assert all(params[n].dim() in (2, 4) for n in names)  # conv and linear weights only, no BN or bias


def _pruned_cnn(seed=0):
    torch.manual_seed(seed)
    model = build_model("lotteryfl_cnn", (1, 28, 28), 10)
    params = dict(model.named_parameters())
    names = prunable_names(model)
    return model, magnitude_prune(Mask.ones_like({n: params[n] for n in names}), params, 0.5)


def _image_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    return x, (x.flatten(1)[:, :10].argmax(1)).long()


def test_channels_last_training_converts_during_the_run_and_hands_back_standard_weights():
    """memory_format: channels_last trains the conv weights in NHWC (seen from inside the run) and leaves them
    contiguous afterwards, masked weights exactly zero, and the values those of the standard layout up to float
    rounding; the default leaves the layout alone throughout."""
    trained, layouts = {}, {}
    for memory_format in ("contiguous", "channels_last"):
        model, mask = _pruned_cnn()
        conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # > 1 input channel: the
        # layouts differ in strides (a 1-channel weight is contiguous in both)
        seen = []
        cfg = TrainingConfig(optimizer="sgd", lr=0.01, momentum=0.5, batch_size=32, iterations=9, eval_every=3,
                             memory_format=memory_format)
        train(model, _image_data(), cfg, torch.Generator().manual_seed(0), mask=mask, val_data=_image_data(32, 1),
              on_iteration=lambda step, m: seen.append(conv.weight.is_contiguous(memory_format=torch.channels_last)
                                                       and not conv.weight.is_contiguous()))
        layouts[memory_format] = seen
        params = dict(model.named_parameters())
        assert all(p.is_contiguous() for p in params.values())
        for name, keep in mask.items():
            assert torch.count_nonzero(params[name][~keep]) == 0
        trained[memory_format] = {k: v.detach().clone() for k, v in params.items()}
    assert layouts == {"contiguous": [False] * 9, "channels_last": [True] * 9}
    for name, value in trained["contiguous"].items():
        torch.testing.assert_close(trained["channels_last"][name], value, rtol=1e-4, atol=1e-5)


def test_channels_last_leaves_a_model_without_convolutions_as_it_is():
    model, mask = _pruned_model()
    cfg = TrainingConfig(batch_size=32, iterations=5, memory_format="channels_last")
    before = {k: v.stride() for k, v in model.named_parameters()}
    train(model, _toy_data(), cfg, torch.Generator().manual_seed(0), mask=mask)
    assert {k: v.stride() for k, v in model.named_parameters()} == before


def test_the_federated_local_section_hands_its_memory_format_to_every_training_run():
    from fedlottery.config import LocalTrainingConfig

    assert LocalTrainingConfig().as_training().memory_format == "contiguous"
    assert LocalTrainingConfig(memory_format="channels_last").as_training().memory_format == "channels_last"
