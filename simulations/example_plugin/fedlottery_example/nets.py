"""A small CNN for any (C, H, W) input, built the way fedlottery's own models are: build(input_shape, num_classes).

fedlottery prunes every Conv2d and Linear weight of a model unless the model names its prunable parameters
itself; this one keeps its first convolution dense (it holds few weights and sees raw pixels), so it lists the
rest in `prunable_parameters`. Its head (kept personal by FedPer and FedRep, frozen by FedBABU) is the last
nn.Linear, fedlottery's default; a model with a larger head names its submodules in `head_modules`.
"""
from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """conv(8) - conv(16) - global average pool - linear(32) - linear(num_classes)."""

    prunable_parameters = ("conv2.weight", "fc1.weight", "fc2.weight")  # conv1 stays dense

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels = input_shape[0]
        self.conv1 = nn.Conv2d(channels, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)  # any image size works: the classifier always sees 16 x 2 x 2
        self.fc1 = nn.Linear(16 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = nn.functional.relu(self.conv1(x))
        x = self.pool(nn.functional.relu(self.conv2(x)))
        return self.fc2(nn.functional.relu(self.fc1(x.flatten(1))))


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The builder fedlottery calls with the data set's image shape and number of classes."""
    return SmallCNN(input_shape, num_classes)
