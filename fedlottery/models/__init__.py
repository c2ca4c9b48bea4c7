"""Model registry: every network the papers use, built by name for a dataset's input shape, and a user's own.

Every model's prunable tensors are the ``weight`` of its Conv2d and Linear layers (biases and norm layers are
never pruned, ALGORITHMS.md) unless the model declares ``prunable_parameters``; ``output_layer`` names the last
Linear so pruning rules can treat it apart.

A user's model (docs/plugins.md) is a builder of the same signature as the registry's, ``(input_shape,
num_classes) -> nn.Module``, named in ``model.name`` by its import path (``my_package.nets:build``) or by an
entry point of the group ``fedlottery.models``. The first time one is built in a process it is checked: an
nn.Module, a valid prunable set and head, and one forward pass giving (batch, num_classes).
"""
from __future__ import annotations

import copy
import functools
import inspect
from typing import Callable

import torch
from torch import nn

from fedlottery.config.plugins import resolve_or_explain
from fedlottery.errors import ConfigError
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

INITS = ("glorot_normal", "kaiming_normal", "default", "keep")
ENTRY_POINT_GROUP = "fedlottery.models"


def builder(name: str, key: str = "model.name") -> Builder:
    """The builder `name` stands for: a registry name (these win), an import path or an installed entry point.
    Raises ConfigError naming `key` (the config key the name came from) when it is none of them."""
    if name in MODELS:
        return MODELS[name]
    return _plugin_builder(name, key)


@functools.lru_cache(maxsize=16)
def _plugin_builder(name: str, key: str) -> Builder:
    """Memoised: a client builds its model for every message, and scanning entry points takes milliseconds."""
    found = resolve_or_explain(name, ENTRY_POINT_GROUP, key, "model", sorted(MODELS), "a builder's")
    _check_signature(found, name, key)
    return found


def _check_signature(found: Callable, name: str, key: str) -> None:
    """A builder takes (input_shape, num_classes), as the registry's do; checked before it is ever called."""
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):  # some callables (C functions) have none to read: the call will tell
        return
    try:
        signature.bind((1, 8, 8), 10)
    except TypeError as exc:
        raise ConfigError(f"{key}: {name!r} cannot be called as builder(input_shape, num_classes) ({exc}); give "
                          "it those two parameters") from None


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, init: str = "glorot_normal"
) -> nn.Module:
    """Build model `name` with fresh weights drawn from torch's global RNG (seed it first)."""
    shape = tuple(int(n) for n in input_shape)
    model = builder(name)(shape, num_classes)
    if name not in MODELS:
        check_user_model(model, name, shape, num_classes)
    initialize(model, init)
    return model


def check_user_model(model: object, name: str, input_shape: tuple[int, ...], num_classes: int,
                     key: str = "model.name") -> None:
    """What a user's builder returned is usable: an nn.Module with prunable tensors and a head, whose output
    on a dummy batch of zeros is (batch, num_classes). Nothing here draws random numbers, so the seeded
    weights a client builds are the server's."""
    where = f"{key}: {name}({input_shape}, {num_classes})"
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module; return the network")
    try:
        prunable, _ = prunable_names(model), head_names(model)
    except ValueError as exc:  # a bad prunable_parameters or head_modules declaration, or no nn.Linear head
        raise ConfigError(f"{where}: {exc}") from None
    if not prunable:
        raise ConfigError(f"{where}: {type(model).__name__} has no Conv2d or Linear layer to prune; name the "
                          "parameters to prune in an attribute prunable_parameters")
    _check_output(model, where, input_shape, num_classes)


def _check_output(model: nn.Module, where: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Once per (class, setting): a client builds its model for every message. Conv models are also run in
    channels_last, the layout fedlottery evaluates them in on CPU (fedlottery.training), where e.g.
    ``x.view(n, -1)`` fails."""
    if (type(model), where) in _CHECKED:
        return
    param = next(model.parameters(), None)
    batch = torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu")
    out = _forward(model, batch, where, "", "size the first layer from input_shape")
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        _forward(copy.deepcopy(model).to(memory_format=torch.channels_last),
                 batch.contiguous(memory_format=torch.channels_last), where,
                 " in channels_last (the layout fedlottery evaluates conv models in on CPU)",
                 "flatten with x.flatten(1) or x.reshape(...), not x.view(...)")
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ConfigError(f"{where}: the forward pass on a batch of shape {tuple(batch.shape)} gives {shape}; "
                          f"expected a tensor of shape (2, {num_classes}): one logit per class, from num_classes")
    _CHECKED.add((type(model), where))


def _forward(model: nn.Module, batch: torch.Tensor, where: str, layout: str, fix: str):
    """One forward pass in eval mode (BatchNorm statistics untouched, no dropout draws), mode restored."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(batch)
    except Exception as exc:  # noqa: BLE001 - the user's forward pass: say what it was given
        message = " ".join(str(exc).split())
        raise ConfigError(f"{where}: the forward pass fails on a batch of shape {tuple(batch.shape)}{layout}: "
                          f"{type(exc).__name__}: {message}; {fix}") from None
    finally:
        model.train(training)


_CHECKED: set[tuple[type, str]] = set()  # (model class, builder and setting) whose forward pass was checked


def initialize(model: nn.Module, init: str) -> None:
    """Re-draw every conv/linear weight (biases to zero) with the named scheme; 'default' redraws torch's own,
    'keep' leaves the weights as the builder made them (a user model's own initialisation)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init == "keep":
        return
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
    """Names of the prunable parameters, in model order: every Conv2d and Linear weight, unless the model
    declares ``prunable_parameters``: the names (as in `named_parameters`) of exactly the tensors to prune,
    e.g. to keep a first layer dense or to prune a layer type fedlottery does not know (a Conv1d, an
    Embedding)."""
    declared = getattr(model, "prunable_parameters", None)
    if declared is None:
        return [
            f"{name}.weight" if name else "weight"
            for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        ]
    params = [n for n, _ in model.named_parameters()]
    unknown = [n for n in declared if n not in params] if not isinstance(declared, str) else []
    if isinstance(declared, str) or unknown or not declared:
        raise ValueError(f"{type(model).__name__}.prunable_parameters = {declared!r}: expected a non-empty tuple "
                         f"of its parameter names; unknown: {unknown}; known: {', '.join(params)}")
    return [n for n in params if n in set(declared)]


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
    "ENTRY_POINT_GROUP",
    "builder",
    "build_model",
    "check_user_model",
    "initialize",
    "prunable_names",
    "output_layer_name",
    "head_names",
    "conv_names",
    "batchnorm_names",
    "count_prunable",
    "clone_state",
]
