"""Per-layer density budgets and the masks drawn from them (FLASH's server side).

FLASH keeps the clients' per-layer densities, rescales them so the whole model sits at the target density,
and then draws a mask per layer with exactly those counts: at random (sparsity hunting) or as the top-|w|
entries of the aggregated weights (JMWST, hetero-FLASH).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from fedlottery.sparsity.mask import Mask


def largest_remainder(exact: Mapping[str, float], total: int) -> dict[str, int]:
    """Integers that sum to `total`, each the floor of its exact share plus one for the largest remainders."""
    floors = {n: math.floor(e) for n, e in exact.items()}
    short = total - sum(floors.values())
    for name in sorted(exact, key=lambda n: floors[n] - exact[n])[:max(short, 0)]:
        floors[name] += 1
    return floors


def rescale_counts(densities: Mapping[str, float], sizes: Mapping[str, int], target: float) -> dict[str, int]:
    """Kept counts per layer proportional to `densities`, scaled so the total is round(target * N).

    Layers whose scaled density would pass 1 are capped at full and the rest rescaled (water-filling); a
    layer with density 0 stays empty unless the others cannot hold the budget, in which case the empty
    layers share what is left in proportion to their sizes.
    """
    if not 0 <= target <= 1:
        raise ValueError(f"target density must be in [0, 1], got {target}")
    total = sum(sizes.values())
    budget = round(target * total)
    weights = {n: max(float(densities[n]), 0.0) * sizes[n] for n in sizes}
    if sum(weights.values()) == 0:
        weights = dict(sizes)
    full: set[str] = set()
    while True:
        free = [n for n in sizes if n not in full]
        remaining = budget - sum(sizes[n] for n in full)
        mass = sum(weights[n] for n in free)
        if mass == 0 and remaining > 0 and free:  # the dense layers are full: the empty ones share the rest
            weights.update({n: float(sizes[n]) for n in free})
            continue
        share = {n: (weights[n] / mass if mass > 0 else 0.0) * remaining for n in free}
        over = [n for n in free if share[n] > sizes[n]]
        if not over:
            break
        full.update(over)
    exact = {n: float(sizes[n]) if n in full else share[n] for n in sizes}
    counts = largest_remainder(exact, budget)
    return {n: min(c, sizes[n]) for n, c in counts.items()}


def random_mask_with_counts(
    shapes: Mapping[str, torch.Size | tuple[int, ...]], counts: Mapping[str, int], generator: torch.Generator
) -> Mask:
    """A uniformly random mask keeping exactly counts[name] entries of each tensor."""
    tensors = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[: counts[name]]] = True
        tensors[name] = flat.reshape(tuple(shape))
    return Mask(tensors)


def top_magnitude_mask(
    weights: Mapping[str, torch.Tensor], counts: Mapping[str, int], within: Mask | None = None
) -> Mask:
    """Keep the counts[name] largest-|w| entries of each tensor (ties: earlier position first), only among
    the entries `within` keeps when given (so masks derived at lower densities nest inside it)."""
    tensors = {}
    for name, count in counts.items():
        scores = weights[name].detach().abs().float().cpu().reshape(-1)
        allowed = torch.ones_like(scores, dtype=torch.bool) if within is None else within[name].reshape(-1)
        candidates = allowed.nonzero().squeeze(1)
        order = torch.argsort(-scores[candidates], stable=True)
        flat = torch.zeros_like(scores, dtype=torch.bool)
        flat[candidates[order[: min(count, candidates.numel())]]] = True
        tensors[name] = flat.reshape(weights[name].shape)
    return Mask(tensors)


def layer_counts(shapes: Mapping[str, torch.Size | tuple[int, ...]], density: float, distribution: str
                 ) -> dict[str, int]:
    """Kept counts per layer summing to round(density * N): `uniform` (every layer at the density) or `erk`
    (Erdos-Renyi-Kernel: a layer's density proportional to sum(shape) / prod(shape), so small layers stay
    denser; layers that would pass 1 are capped at full and the rest rescaled, as `rescale_counts` does)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if distribution == "uniform":
        return rescale_counts({n: density for n in sizes}, sizes, density)
    if distribution == "erk":
        return rescale_counts({n: sum(shapes[n]) / sizes[n] for n in sizes}, sizes, density)
    raise ValueError(f"unknown layer distribution {distribution!r}; use 'erk' or 'uniform'")
