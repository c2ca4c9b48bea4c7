"""Pruning rules: each takes a Mask (and weights) and returns a new, sparser Mask. Tensors only, no training.

Counting convention: a rate p removes round(p * kept) of a tensor's *remaining* entries (ties broken by
position, so results are deterministic). A `target_density` clamps the step so the overall density lands on
ceil(target * n) kept entries exactly; `overshoot=True` drops the clamp (LotteryFL authors' code).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from fedlottery.sparsity.mask import Mask


def layer_rates(
    names: Iterable[str],
    rate: float,
    *,
    output_name: str | None = None,
    output_rate: float | None = None,
    conv_names: Iterable[str] = (),
    conv_rate: float | None = None,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-tensor pruning rates: `rate` everywhere, conv and output layers at their own rates, then overrides."""
    names = list(names)
    conv = set(conv_names)
    rates = {}
    for name in names:
        r = rate
        if name in conv and conv_rate is not None:
            r = conv_rate
        if name == output_name and output_rate is not None:
            r = output_rate
        rates[name] = r
    for name, r in (overrides or {}).items():
        if name not in rates:
            raise KeyError(f"layer_rates names {name!r}, which is not a prunable tensor; those are {names}")
        rates[name] = r
    return rates


def compound_rates(rates: Mapping[str, float], levels: int) -> dict[str, float]:
    """The single-step rates that remove what `levels` iterative steps of `rates` remove (one-shot pruning)."""
    return {name: 1.0 - (1.0 - r) ** levels for name, r in rates.items()}


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _target_kept(mask: Mask, target_density: float | None) -> int | None:
    return None if target_density is None else math.ceil(target_density * mask.numel() - 1e-9)


def _smallest_kept(keep: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k kept entries with the smallest scores (stable: earlier position first on ties)."""
    kept_idx = keep.reshape(-1).nonzero().squeeze(1)
    if k <= 0 or kept_idx.numel() == 0:
        return kept_idx[:0]
    values = scores.reshape(-1)[kept_idx]
    order = torch.argsort(values, stable=True)
    return kept_idx[order[:k]]


def _clamp_counts(counts: dict[str, int], allowed: int) -> dict[str, int]:
    """Scale per-layer removal counts down so they sum to `allowed` (largest-remainder rounding)."""
    total = sum(counts.values())
    if total <= allowed:
        return counts
    exact = {n: c * allowed / total for n, c in counts.items()}
    floors = {n: math.floor(e) for n, e in exact.items()}
    short = allowed - sum(floors.values())
    for name in sorted(exact, key=lambda n: floors[n] - exact[n])[:short]:
        floors[name] += 1
    return floors


def _removal_budget(mask: Mask, wanted: int, target_density: float | None, overshoot: bool) -> int:
    target = _target_kept(mask, target_density)
    if target is None:
        return wanted
    allowed = max(mask.num_kept() - target, 0)
    if allowed == 0:
        return 0  # already at or below target: nothing more to prune
    return wanted if overshoot else min(wanted, allowed)


def _as_rates(mask: Mask, rates: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(rates, (int, float)):
        return {name: float(rates) for name in mask}
    missing = set(mask.names()) - set(rates)
    if missing:
        raise KeyError(f"no pruning rate for {sorted(missing)}")
    return {name: float(rates[name]) for name in mask}


def _remove(mask: Mask, removals: Mapping[str, torch.Tensor]) -> Mask:
    out = mask.copy()
    for name, idx in removals.items():
        out[name].view(-1)[idx] = False
    return out


def magnitude_prune(
    mask: Mask,
    weights: Mapping[str, torch.Tensor],
    rates: float | Mapping[str, float],
    *,
    scope: str = "layer",
    target_density: float | None = None,
    overshoot: bool = False,
) -> Mask:
    """Remove the smallest-|w| kept entries: per tensor at its own rate (layer) or by one threshold (global).

    For scope='global', `rates` must be one number: the fraction of all remaining entries to remove.
    """
    scores = {name: weights[name].detach().abs().float().cpu() for name in mask}
    if scope == "global":
        if not isinstance(rates, (int, float)):
            raise ValueError("global pruning takes one rate, not per-layer rates")
        k = _removal_budget(mask, _round(rates * mask.num_kept()), target_density, overshoot)
        names = mask.names()
        flat_scores = torch.cat([scores[n].reshape(-1) for n in names])
        flat_keep = torch.cat([mask[n].reshape(-1) for n in names])
        chosen = _smallest_kept(flat_keep, flat_scores, k)
        removals, start = {}, 0
        for n in names:
            size = mask[n].numel()
            inside = chosen[(chosen >= start) & (chosen < start + size)]
            removals[n] = inside - start
            start += size
        return _remove(mask, removals)
    if scope != "layer":
        raise ValueError(f"unknown pruning scope {scope!r}; use 'layer' or 'global'")
    per_layer = _as_rates(mask, rates)
    kept = mask.kept_per_layer()
    counts = {n: _round(per_layer[n] * kept[n]) for n in mask}
    budget = _removal_budget(mask, sum(counts.values()), target_density, overshoot)
    counts = _clamp_counts(counts, budget)
    return _remove(mask, {n: _smallest_kept(mask[n], scores[n], counts[n]) for n in mask})


def random_prune(
    mask: Mask,
    rates: float | Mapping[str, float],
    generator: torch.Generator,
    *,
    target_density: float | None = None,
    overshoot: bool = False,
) -> Mask:
    """Remove a random round(p * kept) of each tensor's kept entries (same counts as layer-wise magnitude)."""
    scores = {n: torch.rand(mask[n].shape, generator=generator) for n in mask}
    return magnitude_prune(
        mask, scores, rates, scope="layer", target_density=target_density, overshoot=overshoot
    )


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask keeping exactly as many entries per tensor as `mask` (the random-pruning control)."""
    tensors = {}
    for name, keep in mask.items():
        k = int(keep.sum())
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[torch.randperm(keep.numel(), generator=generator)[:k]] = True
        tensors[name] = flat.reshape(keep.shape)
    return Mask(tensors)


def structured_prune(
    mask: Mask,
    weights: Mapping[str, torch.Tensor],
    rate: float,
    *,
    exclude: Iterable[str] = (),
) -> Mask:
    """Remove round(rate * alive) whole output filters/neurons per tensor, those with the smallest L1 norm.

    A filter is alive while any of its entries is kept; norms are of the masked weights. Tensors in
    `exclude` (usually the output layer: its rows are the classes) are left as they are.
    """
    skip = set(exclude)
    out = mask.copy()
    for name, keep in mask.items():
        if name in skip or keep.dim() < 2:
            continue
        rows = keep.reshape(keep.shape[0], -1)
        norms = (weights[name].detach().float().cpu().reshape(keep.shape[0], -1) * rows).abs().sum(1)
        alive = rows.any(1)
        drop = _smallest_kept(alive, norms, _round(rate * int(alive.sum())))
        out[name].view(keep.shape[0], -1)[drop] = False
    return out
