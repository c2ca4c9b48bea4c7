"""The fast evaluation paths agree with the original loop and leave the model exactly as they found it."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from fedlottery.config import TrainingConfig
from fedlottery.models import build_model
from fedlottery.training import (
    _evaluate_reference, default_batch_size, evaluate, evaluate_many, train, warm_up,
)


@torch.no_grad()
def old_evaluate(model, data, batch_size=2000):
    """fedlottery.training.evaluate as it was before the fast paths, verbatim."""
    x, y = data
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def _data(shape, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _model(name, shape, seed=0):
    torch.manual_seed(seed)
    return build_model(name, shape, 10)


# 1-channel and 3-channel conv (the latter converts its input to channels_last), a BN conv and an MLP.
CASES = [("cnn_digits", (1, 8, 8)), ("cnn_digits", (3, 8, 8)), ("cnn_digits_bn", (1, 8, 8)), ("mlp_digits", (1, 8, 8))]
BATCHES = [None, 1, 7, 64, 300, 2000]


@pytest.mark.parametrize("name,shape", CASES)
def test_evaluate_matches_the_old_definition_at_every_batch_size(name, shape):
    model, data = _model(name, shape), _data(shape)
    ref_loss, ref_acc = old_evaluate(model, data)
    assert 0.0 < ref_acc < 1.0
    for batch_size in BATCHES:
        for channels_last in (None, True, False):
            loss, acc = evaluate(model, data, batch_size, channels_last=channels_last)
            assert acc == ref_acc, (batch_size, channels_last)
            assert math.isclose(loss, ref_loss, rel_tol=1e-5), (batch_size, channels_last)
        # the old loop itself gives the same accuracy whatever its batch size
        assert old_evaluate(model, data, batch_size or 2000)[1] == ref_acc


def test_evaluate_on_the_lotteryfl_cnn_and_the_reference_loop_is_the_old_one():
    model, data = _model("lotteryfl_cnn", (1, 28, 28)), _data((1, 28, 28), n=200)
    ref_loss, ref_acc = old_evaluate(model, data)
    loss, acc = evaluate(model, data)
    assert acc == ref_acc and math.isclose(loss, ref_loss, rel_tol=1e-5)
    assert _evaluate_reference(model, data) == (ref_loss, ref_acc)  # bit for bit


def test_evaluate_many_equals_separate_calls():
    shape = (3, 8, 8)
    models = [_model("cnn_digits", shape, 0), _model("cnn_digits_bn", shape, 1), _model("mlp_digits", shape, 2)]
    data = _data(shape)
    for batch_size in (None, 7, 2000):
        together = evaluate_many(models, data, batch_size)
        apart = [evaluate(m, data, batch_size) for m in models]
        assert [acc for _, acc in together] == [acc for _, acc in apart]
        for (loss_a, _), (loss_b, _) in zip(together, apart):
            assert math.isclose(loss_a, loss_b, rel_tol=1e-12)
    # the same model twice, and the personal + deployed pair a client evaluates
    assert evaluate_many([models[0], models[0]], data) == [evaluate(models[0], data)] * 2
    assert evaluate_many([], data) == []


def _snapshot(model):
    return {
        "modes": [m.training for m in model.modules()],
        "params": [(p, p.data_ptr(), p.stride(), p.requires_grad) for p in model.parameters()],
        "buffers": [(b, b.data_ptr(), b.stride(), b.clone()) for b in model.buffers()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_unchanged(model, before):
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    for (p, ptr, stride, rg), (q, ptr2, stride2, rg2) in zip(before["params"], after["params"]):
        assert p is q and ptr == ptr2 and stride == stride2 and rg == rg2
    for (b, ptr, stride, value), (c, ptr2, stride2, _) in zip(before["buffers"], after["buffers"]):
        assert b is c and ptr == ptr2 and stride == stride2 and torch.equal(b, value)  # BN stats untouched
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v)


@pytest.mark.parametrize("channels_last_model", [False, True])
def test_model_is_left_exactly_as_it_was(channels_last_model):
    shape = (3, 8, 8)
    model = _model("cnn_digits_bn", shape)
    if channels_last_model:
        model.to(memory_format=torch.channels_last)
    model.train()
    model.features[1].eval()  # mixed modes: a frozen BN inside a training model
    model.features[0].bias.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = _snapshot(model)
    grads = [p.grad for p in model.parameters()]
    evaluate(model, _data(shape))
    evaluate_many([model, _model("cnn_digits", shape)], _data(shape), 7, channels_last=True)
    _assert_unchanged(model, before)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    # training still works afterwards (no inference tensors left behind)
    x, y = _data(shape, 16)
    F.cross_entropy(model(x), y).backward()


def test_model_is_restored_when_the_forward_pass_fails():
    shape = (1, 8, 8)
    model = _model("cnn_digits", shape)
    before = _snapshot(model)
    with pytest.raises(RuntimeError):
        evaluate(model, (torch.randn(4, 2, 8, 8), torch.zeros(4, dtype=torch.long)))  # wrong channel count
    _assert_unchanged(model, before)


def test_empty_data_gives_nan():
    model = _model("cnn_digits", (1, 8, 8))
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    for loss, acc in (evaluate(model, empty), old_evaluate(model, empty), *evaluate_many([model, model], empty)):
        assert math.isnan(loss) and math.isnan(acc)


def test_default_batch_size():
    assert default_batch_size(_model("lotteryfl_cnn", (1, 28, 28)), torch.zeros(1, 1, 28, 28)) == 128
    assert default_batch_size(_model("cnn_digits", (1, 8, 8)), torch.zeros(1, 1, 8, 8)) == 512
    assert default_batch_size(_model("conv2", (3, 32, 32)), torch.zeros(1, 3, 32, 32)) == 64
    assert default_batch_size(_model("lenet_300_100", (1, 28, 28)), torch.zeros(1, 1, 28, 28)) == 512


def test_train_keeps_the_reference_evaluation():
    """train's validation losses are the original loop's, bit for bit (its results must not move)."""
    model, data = _model("mlp_digits", (1, 8, 8)), _data((1, 8, 8), 128)
    val = _data((1, 8, 8), 64, seed=1)
    cfg = TrainingConfig(optimizer="sgd", lr=0.05, batch_size=32, iterations=8, eval_every=4)
    result = train(model, data, cfg, torch.Generator().manual_seed(0), val_data=val, test_data=val)
    assert result.evals[-1]["val_loss"] == old_evaluate(model, val)[0]
    assert result.test_acc_final == old_evaluate(model, val)[1]


def test_warm_up_imports_dynamo_and_is_cheap_once_done():
    warm_up()
    assert "torch._dynamo" in sys.modules
    assert warm_up() < 1.0
