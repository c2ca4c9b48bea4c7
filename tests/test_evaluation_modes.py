"""Evaluation modes: fine-tuning before testing changes only the evaluated copy."""
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
