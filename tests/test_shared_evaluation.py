"""A model many clients share is scored once per process (fedlottery.runtime.shared_evaluation), and that changes cost,
never a number: each client's loss and accuracy equal testing it on its own images."""
import pytest
import torch

import fedlottery.runtime.client_app as client_app
import fedlottery.runtime.shared_evaluation as shared_evaluation
from fedlottery.models import build_model
from fedlottery.runtime.shared_evaluation import evaluate_shared, worth_sharing
from fedlottery.training import evaluate, evaluate_per_example
from federation_helpers import Federation, small_config


@pytest.fixture(autouse=True)
def _fresh_cache():
    shared_evaluation.forget()
    client_app.shared_test_set.cache_clear()
    yield
    shared_evaluation.forget()
    client_app.shared_test_set.cache_clear()


def _model_and_data(seed=0, n=300):
    torch.manual_seed(seed)
    model = build_model("cnn_digits_bn", (1, 8, 8), 10)
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))
    return model, (x, y)


def test_per_example_results_average_to_evaluate_on_any_subset():
    model, (x, y) = _model_and_data()
    losses, hits = evaluate_per_example(model, (x, y))
    assert losses.dtype == torch.float64 and hits.dtype == torch.bool and len(losses) == len(hits) == len(y)
    for idx in (torch.arange(300), torch.arange(0, 300, 7), torch.tensor([5, 5, 17, 299])):
        loss, acc = evaluate(model, (x[idx], y[idx]))
        assert int(hits[idx].sum()) / len(idx) == acc
        assert float(losses[idx].mean()) == pytest.approx(loss, rel=1e-6)


def test_shared_scores_once_per_distinct_model_and_experiment(monkeypatch):
    model, test = _model_and_data()
    calls = []
    real = shared_evaluation.evaluate_per_example
    monkeypatch.setattr(shared_evaluation, "evaluate_per_example", lambda m, d: calls.append(1) or real(m, d))
    a, b = torch.arange(0, 100), torch.arange(50, 300)
    assert evaluate_shared(model, "exp", test, a) == pytest.approx(evaluate(model, (test[0][a], test[1][a])))
    assert evaluate_shared(model, "exp", test, b) == pytest.approx(evaluate(model, (test[0][b], test[1][b])))
    assert len(calls) == 1  # the second client read its result off the first pass
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3  # one weight differs: a different model
    evaluate_shared(model, "exp", test, a)
    assert len(calls) == 2
    evaluate_shared(model, "another experiment", test, a)
    assert len(calls) == 3
    empty = evaluate_shared(model, "another experiment", test, torch.zeros(0, dtype=torch.long))
    assert all(v != v for v in empty)  # (nan, nan), as evaluate gives on empty data


def test_sharing_pays_only_where_test_sets_overlap():
    assert worth_sharing([2000] * 400, 10_000)  # test: labels, ~76 clients per image
    assert not worth_sharing([25] * 400, 10_000)  # every test image once
    assert not worth_sharing([], 0)


def _evaluations(tmp_path, name, monkeypatch, share: bool):
    # 4 clients' label test sets overlap ~1.2x here; share at any overlap, or never
    monkeypatch.setattr(shared_evaluation, "OVERLAP_TO_SHARE", 0.0 if share else float("inf"))
    shared_evaluation.forget()
    client_app.shared_test_set.cache_clear()
    cfg = small_config([name], partition={"test": "labels"}, evaluation={"deployed": True})
    fed = Federation(tmp_path / ("shared" if share else "own"), name, cfg)
    fed.train(1)
    fed.train(2)
    return fed.evaluate(2)


@pytest.mark.parametrize("name", ["fedavg", "fedbn", "lotteryfl"])
def test_client_results_are_the_same_with_and_without_sharing(tmp_path, flower_run, monkeypatch, name):
    calls = []
    real = shared_evaluation.evaluate_per_example
    monkeypatch.setattr(shared_evaluation, "evaluate_per_example", lambda m, d: calls.append(1) or real(m, d))
    with_sharing = _evaluations(tmp_path, name, monkeypatch, share=True)
    scored = len(calls)
    without = _evaluations(tmp_path, name, monkeypatch, share=False)
    assert len(calls) == scored  # nothing shared once sharing is off
    assert with_sharing.keys() == without.keys()
    for pid in with_sharing:
        assert with_sharing[pid]["test-acc"] == without[pid]["test-acc"]
        assert with_sharing[pid]["deployed-acc"] == without[pid]["deployed-acc"]
        assert with_sharing[pid]["test-loss"] == pytest.approx(without[pid]["test-loss"], rel=1e-6)
    # FedAvg's clients all test theta_g: one pass for all; FedBN's own BatchNorm makes each model its own
    assert scored == {"fedavg": 1, "fedbn": 0}.get(name, scored)
