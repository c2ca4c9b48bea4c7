"""Fully connected networks: Frankle & Carbin's LeNet-300-100 and a small MLP for the 8x8 digits."""
from __future__ import annotations

import math

from torch import nn


class _MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = (math.prod(input_shape), *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class LeNet300100(_MLP):
    """784-300-100-10 (for MNIST), the network of the original lottery-ticket experiments."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__(input_shape, num_classes, (300, 100))


class MLPDigits(_MLP):
    """64-128-64-10: the embedded default's MLP, small enough for one-minute IMP runs."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__(input_shape, num_classes, (128, 64))
