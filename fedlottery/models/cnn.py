"""Convolutional networks: LotteryFL's MNIST CNN, LeNet-5, Frankle & Carbin's Conv-2/4/6, a digits CNN."""
from __future__ import annotations

import math

import torch
from torch import nn


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return math.prod(features(torch.zeros(1, *input_shape)).shape[1:])


class _ConvNet(nn.Module):
    """Feature extractor followed by a ReLU MLP head; the flattened size is inferred from the input shape."""

    def __init__(self, features: nn.Module, input_shape, num_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        self.features = features
        sizes = (_flat_size(features, input_shape), *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        return self.classifier(self.features(x))


def with_batchnorm(features: nn.Sequential) -> nn.Sequential:
    """The same feature extractor with a BatchNorm2d after every conv (FedLTN keeps BN personal)."""
    layers: list[nn.Module] = []
    for layer in features:
        layers.append(layer)
        if isinstance(layer, nn.Conv2d):
            layers.append(nn.BatchNorm2d(layer.out_channels))
    return nn.Sequential(*layers)


class LotteryFLCNN(_ConvNet):
    """conv(1->10,5)-pool-conv(10->20,5)-pool-fc(320->50)-fc(50->10): 21,750 weights on MNIST (LotteryFL).

    The original has dropout; it is left out so that every method trains the same deterministic network.
    """

    def __init__(self, input_shape, num_classes: int):
        c = input_shape[0]
        features = nn.Sequential(
            nn.Conv2d(c, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU()
        )
        super().__init__(features, input_shape, num_classes, (50,))


class LeNet5(_ConvNet):
    """conv(3->6,5)-pool-conv(6->16,5)-pool-fc 400-120-84-10: 61,770 weights on CIFAR-10 (LotteryFL)."""

    def __init__(self, input_shape, num_classes: int):
        c = input_shape[0]
        features = nn.Sequential(
            nn.Conv2d(c, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        super().__init__(features, input_shape, num_classes, (120, 84))


def _vgg_blocks(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Pairs of 3x3 convs, each pair followed by 2x2 max-pooling (Frankle & Carbin's Conv-N)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = width
    return nn.Sequential(*layers)


class Conv2(_ConvNet):
    """64,64,pool - fc 256,256,10."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__(_vgg_blocks(input_shape[0], (64,)), input_shape, num_classes, (256, 256))


class Conv4(_ConvNet):
    """64,64,pool,128,128,pool - fc 256,256,10."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__(_vgg_blocks(input_shape[0], (64, 128)), input_shape, num_classes, (256, 256))


class Conv6(_ConvNet):
    """64,64,pool,128,128,pool,256,256,pool - fc 256,256,10."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__(_vgg_blocks(input_shape[0], (64, 128, 256)), input_shape, num_classes, (256, 256))


class CNNDigits(_ConvNet):
    """conv(1->16,3)-pool-conv(16->32,3)-pool-fc 10 for the 8x8 digits."""

    def __init__(self, input_shape, num_classes: int):
        c = input_shape[0]
        features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        super().__init__(features, input_shape, num_classes, ())


def _bn_variant(base: type[_ConvNet]) -> type[_ConvNet]:
    """`base` with BatchNorm after each conv: built like `base`, then its features are wrapped."""

    class WithBN(base):
        def __init__(self, input_shape, num_classes: int):
            super().__init__(input_shape, num_classes)
            self.features = with_batchnorm(self.features)

    WithBN.__name__ = WithBN.__qualname__ = f"{base.__name__}BN"
    WithBN.__doc__ = f"{base.__name__} with BatchNorm2d after every conv."
    return WithBN


LotteryFLCNNBN = _bn_variant(LotteryFLCNN)
LeNet5BN = _bn_variant(LeNet5)
CNNDigitsBN = _bn_variant(CNNDigits)
