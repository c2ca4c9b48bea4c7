"""Prune-and-regrow: one step of dynamic sparse training (FLASH's local mask search).

Each layer drops its smallest-|w| kept weights at the given rate; the total dropped is regrown at random
pruned positions, spread over the layers in proportion to their mean |w| (so layers that matter more end
up denser). Regrown entries start at zero: the caller's weights are already zero wherever the mask was off.
"""
from __future__ import annotations

from typing import Mapping

import torch

from fedlottery.sparsity.budgets import largest_remainder, top_magnitude_mask
from fedlottery.sparsity.mask import Mask
from fedlottery.sparsity.pruning import magnitude_prune


def _regrow_counts(total: int, share: Mapping[str, float], room: Mapping[str, int]) -> dict[str, int]:
    """Split `total` over layers in proportion to `share`, never above a layer's `room` (spill to others)."""
    counts = {n: 0 for n in share}
    left = min(total, sum(room.values()))
    while left > 0:
        open_layers = [n for n in share if room[n] - counts[n] > 0]
        mass = sum(share[n] for n in open_layers) or float(len(open_layers))
        exact = {n: left * ((share[n] / mass) if mass else 1.0) for n in open_layers}
        extra = largest_remainder(exact, left)
        for n in open_layers:
            counts[n] += min(extra[n], room[n] - counts[n])
        left = min(total, sum(room.values())) - sum(counts.values())
    return counts


def prune_and_regrow(
    mask: Mask, weights: Mapping[str, torch.Tensor], rate: float, generator: torch.Generator
) -> Mask:
    """Drop round(rate * kept) smallest-|w| entries per layer, regrow as many at random free positions."""
    if rate <= 0:
        return mask.copy()
    pruned = magnitude_prune(mask, weights, rate)
    removed = mask.num_kept() - pruned.num_kept()
    share = {}
    for name in mask:
        kept = mask[name]
        share[name] = float(weights[name].detach().abs().cpu()[kept].mean()) if kept.any() else 0.0
    room = {n: int((~mask[n]).sum()) for n in mask}  # never regrow what was just dropped
    counts = _regrow_counts(removed, share, room)
    out = pruned.copy()
    for name, count in counts.items():
        if count == 0:
            continue
        free = (~mask[name]).reshape(-1).nonzero().squeeze(1)
        chosen = free[torch.randperm(free.numel(), generator=generator)[:count]]
        out[name].view(-1)[chosen] = True
    return out


def drop_and_regrow(mask: Mask, weights: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                    rate: float) -> Mask:
    """RigL-style step: each layer drops round(rate * kept) smallest-|w| kept entries and regrows exactly as
    many at the positions the dropped mask leaves free with the largest |score| (a gradient: RigL, FedDST,
    FedSpa, DisPFL; random scores: random regrowth). Just-dropped positions may come back, as in those codes,
    so each layer's count, and the density, is unchanged."""
    if rate <= 0:
        return mask.copy()
    dropped = magnitude_prune(mask, weights, rate)
    removed = {n: int(mask[n].sum()) - int(dropped[n].sum()) for n in mask}
    free = Mask({n: ~dropped[n] for n in mask})
    grown = top_magnitude_mask(scores, removed, within=free)
    return Mask({n: dropped[n] | grown[n] for n in mask})
