"""Masks and pruning rules over plain tensors (no training, no Flower), shared by every runner."""
from fedlottery.sparsity.mask import Mask
from fedlottery.sparsity.masking import MaskedParameters
from fedlottery.sparsity.pruning import (
    compound_rates,
    layer_rates,
    magnitude_prune,
    random_mask_like,
    random_prune,
    structured_prune,
)

__all__ = [
    "Mask",
    "MaskedParameters",
    "compound_rates",
    "layer_rates",
    "magnitude_prune",
    "random_mask_like",
    "random_prune",
    "structured_prune",
]
