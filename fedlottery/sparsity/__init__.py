"""Masks and pruning rules over plain tensors (no training, no Flower), shared by every runner."""
from fedlottery.sparsity.budgets import layer_counts, random_mask_with_counts, rescale_counts, top_magnitude_mask
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
from fedlottery.sparsity.regrowth import drop_and_regrow, prune_and_regrow

__all__ = [
    "Mask",
    "MaskedParameters",
    "compound_rates",
    "layer_rates",
    "magnitude_prune",
    "random_mask_like",
    "random_prune",
    "structured_prune",
    "prune_and_regrow",
    "drop_and_regrow",
    "layer_counts",
    "random_mask_with_counts",
    "rescale_counts",
    "top_magnitude_mask",
]
