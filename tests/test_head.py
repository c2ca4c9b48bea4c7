"""The head of a model (fedlottery.models.head_names): the last nn.Linear unless the class declares more, and the
strategies that keep it personal (`keeps_head`, `personal_set`)."""
import pytest
import torch
from torch import nn

from fedlottery.models import MODELS, build_model, head_names
from strategies.base import FederatedStrategy
from strategies.fedavg import FedAvgStrategy
from strategies.fedper import FedPerStrategy


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_head_is_the_last_linear_layer(name):
    model = build_model(name, (1, 8, 8) if "digits" in name else (3, 32, 32), 10)
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert head_names(model) == [f"{last}.weight", f"{last}.bias"]


class _TwoLayerHead(nn.Module):
    head_modules = ("fc1", "norm", "fc2")  # FedPer's K_P = 2, with a BatchNorm in between

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(self.body(x))))


def test_a_model_may_declare_a_larger_head_with_its_buffers():
    names = head_names(_TwoLayerHead())
    assert names[:2] == ["fc1.weight", "fc1.bias"] and names[-2:] == ["fc2.weight", "fc2.bias"]
    assert {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"} <= set(names)
    assert not any(n.startswith("body.") for n in names)


@pytest.mark.parametrize("declared,match", [(("fc9",), "unknown: \\['fc9'\\]"), (("",), "unknown: \\[''\\]"),
                                            ((), "non-empty tuple"), ("fc1", "non-empty tuple")])
def test_a_bad_head_declaration_is_refused_by_name(declared, match):
    model = _TwoLayerHead()
    model.head_modules = declared
    with pytest.raises(ValueError, match=match):
        head_names(model)


def test_a_model_without_a_linear_layer_must_declare_its_head():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="no nn.Linear.*head_modules"):
        head_names(model)
    model.head_modules = ("0",)
    assert head_names(model) == ["0.weight", "0.bias"]


def test_personal_set_adds_the_head_only_for_a_strategy_that_keeps_it(make_setup):
    setup = make_setup("cnn_digits_bn")
    names, head = list(setup.theta0), list(setup.head)
    assert head == head_names(build_model("cnn_digits_bn", (1, 8, 8), 10))
    assert FedAvgStrategy.personal_set(None, names, setup.prunable, setup.batchnorm, head) == frozenset()
    assert FedPerStrategy.personal_set(None, names, setup.prunable, setup.batchnorm, head) == frozenset(head)
    assert FedPerStrategy(setup).personal == frozenset(head)
    with pytest.raises(ValueError, match="fedper.*ServerSetup.head = fedlottery.models.head_names"):
        FedPerStrategy.personal_set(None, names, setup.prunable, setup.batchnorm, [])


def test_default_evaluation_state_is_what_was_received():
    received, kept = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    assert FederatedStrategy.evaluation_state(None, received, kept) is received
