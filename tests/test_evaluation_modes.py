"""Evaluation modes: fine-tuning before testing changes only the evaluated copy."""
import pytest
import torch

from fedlottery.runtime.client_app import finetuned_accuracy
from fedlottery.config import FederatedConfig, from_dict
from fedlottery.models import clone_state
from fedlottery.training import evaluate


def test_finetuning_trains_a_copy_and_leaves_the_model_alone(make_task):
    task = make_task(None)
    cfg = from_dict(FederatedConfig, {"local": {"lr": 0.05, "batch_size": 32},
                                      "evaluation": {"finetune_epochs": 3}})
    before = clone_state(task.model)
    acc_before = evaluate(task.model, task.data.test)[1]
    acc = finetuned_accuracy(task.model, task.mask, task.data, cfg, torch.Generator().manual_seed(0))
    after = clone_state(task.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert acc > acc_before + 0.05  # the toy task is learnable in 3 epochs
    again = finetuned_accuracy(task.model, task.mask, task.data, cfg, torch.Generator().manual_seed(0))
    assert again == acc  # seeded


def test_finetuning_respects_the_mask(make_task):
    from fedlottery.sparsity import Mask

    task = make_task(None)
    mask = Mask({n: torch.rand(t.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for n, t in task.mask.items()})
    mask.apply_(dict(task.model.named_parameters()))
    cfg = from_dict(FederatedConfig, {"evaluation": {"finetune_epochs": 1}})
    seen = {}
    real_evaluate = evaluate

    import fedlottery.runtime.client_app as client_app

    def spy(model, data):
        seen.update({n: p.detach().clone() for n, p in model.named_parameters() if n in mask})
        return real_evaluate(model, data)

    client_app.evaluate, original = spy, client_app.evaluate
    try:
        finetuned_accuracy(task.model, mask, task.data, cfg, torch.Generator().manual_seed(0))
    finally:
        client_app.evaluate = original
    assert all(bool((seen[n][~mask[n]] == 0).all()) for n in mask)


def test_finetune_rounds_last_tunes_only_at_the_last_round():
    from fedlottery.runtime.client_app import finetunes_at

    every = from_dict(FederatedConfig, {"rounds": 6, "evaluation": {"finetune_epochs": 1}})
    last = from_dict(FederatedConfig, {"rounds": 6, "evaluation": {"finetune_epochs": 1, "finetune_rounds": "last"}})
    never = from_dict(FederatedConfig, {"rounds": 6, "evaluation": {"finetune_rounds": "last"}})
    assert [finetunes_at(every, r) for r in (2, 4, 6)] == [True, True, True]
    assert [finetunes_at(last, r) for r in (2, 4, 6)] == [False, False, True]
    assert not any(finetunes_at(never, r) for r in (2, 4, 6))


def test_finetune_rounds_is_checked():
    import pytest

    from fedlottery.config import ConfigError

    with pytest.raises(ConfigError, match="finetune_rounds"):
        from_dict(FederatedConfig, {"evaluation": {"finetune_rounds": "first"}})


def _finetuned_rows(out):
    from fedlottery.runs.results import read_csv

    return [(r["round"], r["finetuned_acc_mean"]) for r in read_csv(out / "rounds.csv")
            if r.get("evaluated_clients") is not None]


@pytest.mark.slow
def test_finetune_rounds_last_leaves_the_final_column_unchanged(tmp_path, tiny_config):
    """Fine-tuning a copy never changes a client's state and its seed is (seed, round, partition): tuning only at
    the last round must give exactly the final figure of tuning at every evaluation, and nothing before it."""
    from fedlottery.runtime.simulation import run_federated

    runs = {}
    for when in ("all", "last"):
        cfg = from_dict(FederatedConfig, tiny_config(
            strategies=["lotteryfl"], rounds=4,
            evaluation={"every": 2, "finetune_epochs": 1, "finetune_rounds": when}))
        run_federated(cfg, tmp_path / when, log=lambda _: None)
        runs[when] = _finetuned_rows(tmp_path / when)
    assert [r for r, _ in runs["all"]] == [r for r, _ in runs["last"]] == [2, 4]
    assert runs["all"][0][1] is not None and runs["last"][0][1] is None
    assert runs["last"][-1] == runs["all"][-1]
