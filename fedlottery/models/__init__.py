"""Model registry: every network the papers use, built by name for a dataset's input shape.

Every model's prunable tensors are the ``weight`` of its Conv2d and Linear layers (biases and norm layers are
never pruned, ALGORITHMS.md); ``output_layer`` names the last Linear so pruning rules can treat it apart.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedlottery.models.cnn import (
    CNNDigits, CNNDigitsBN, Conv2, Conv4, Conv6, LeNet5, LeNet5BN, LotteryFLCNN, LotteryFLCNNBN,
)
from fedlottery.models.mlp import LeNet300100, MLPDigits
from fedlottery.models.resnet import ResNet20

Builder = Callable[[tuple[int, int, int], int], nn.Module]

MODELS: dict[str, Builder] = {
    "lenet_300_100": LeNet300100,
    "mlp_digits": MLPDigits,
    "cnn_digits": CNNDigits,
    "cnn_digits_bn": CNNDigitsBN,
    "lotteryfl_cnn": LotteryFLCNN,
    "lotteryfl_cnn_bn": LotteryFLCNNBN,
    "lenet5": LeNet5,
    "lenet5_bn": LeNet5BN,
    "conv2": Conv2,
    "conv4": Conv4,
    "conv6": Conv6,
    "resnet20": ResNet20,
}

INITS = ("glorot_normal", "kaiming_normal", "default")


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, init: str = "glorot_normal"
) -> nn.Module:
    """Build model `name` with fresh weights drawn from torch's global RNG (seed it first)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    model = MODELS[name](tuple(input_shape), num_classes)
    initialize(model, init)
    return model


def initialize(model: nn.Module, init: str) -> None:
    """Re-draw every conv/linear weight (biases to zero) with the named scheme; 'default' keeps torch's."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init == "default":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.reset_parameters()
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if init == "glorot_normal":
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the prunable parameters, in model order: every Conv2d and Linear weight."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def output_layer_name(model: nn.Module) -> str:
    """The parameter name of the classifier's weight (the last Linear)."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer")
    return names[-1]


def head_names(model: nn.Module) -> list[str]:
    """The tensors of the model's head, in state-dict order: what personalised FL keeps per client (FedPer,
    FedRep) or freezes (FedBABU); everything else is the body.

    The head is the last nn.Linear (its weight and bias) unless the model's class declares `head_modules`: the
    names of the submodules (as in `named_modules`) whose parameters and buffers form the head, e.g.
    ``("classifier.1", "classifier.3")`` for a two-layer head (FedPer's K_P = 2).
    """
    declared = getattr(model, "head_modules", None)
    modules = dict(model.named_modules())
    if declared is None:
        linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer to be its head; declare the head's "
                             "submodules in a class attribute head_modules")
        declared = (linear[-1],)
    unknown = [n for n in declared if not n or n not in modules]  # "" would make the whole model the head
    if isinstance(declared, str) or unknown or not declared:
        raise ValueError(f"{type(model).__name__}.head_modules = {declared!r}: expected a non-empty tuple of its "
                         f"submodule names; unknown: {unknown}; known: {', '.join(n for n in modules if n)}")
    prefixes = tuple(f"{n}." for n in declared)
    return [k for k in model.state_dict() if k.startswith(prefixes)]


def conv_names(model: nn.Module) -> list[str]:
    """Parameter names of the conv weights (pruned at their own rate in Frankle & Carbin's Conv-2/4/6)."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def batchnorm_names(model: nn.Module) -> list[str]:
    """Every tensor of every BatchNorm layer: weight, bias and running statistics (personal in FedLTN)."""
    prefixes = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return [k for k in model.state_dict() if any(k.rsplit(".", 1)[0] == p for p in prefixes)]


def count_prunable(model: nn.Module) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in prunable_names(model))


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (theta_0 snapshots, rewinding)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


__all__ = [
    "MODELS",
    "INITS",
    "build_model",
    "initialize",
    "prunable_names",
    "output_layer_name",
    "head_names",
    "conv_names",
    "batchnorm_names",
    "count_prunable",
    "clone_state",
]
