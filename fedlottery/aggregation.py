"""Server-side aggregation rules over plain tensors (no Flower types), shared by the strategies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from fedlottery.sparsity import Mask


@dataclass
class ClientWeights:
    """One client's upload, decoded: its state (zeros at pruned entries), its mask, and its weight."""

    state: Mapping[str, torch.Tensor]
    mask: Mask | None  # None: dense (every entry kept)
    weight: float = 1.0


def mean(
    previous: Mapping[str, torch.Tensor], uploads: Sequence[ClientWeights], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Plain (weighted) mean of every tensor over all uploads, pruned entries counted as zeros (FedAvg)."""
    if not uploads:
        return dict(previous)
    total = sum(u.weight for u in uploads)
    out = dict(previous)
    for name in (list(previous) if names is None else names):
        if not previous[name].is_floating_point():
            out[name] = uploads[0].state[name].clone()  # e.g. BN's num_batches_tracked
            continue
        out[name] = sum(u.weight * u.state[name].float() for u in uploads) / total
    return out


def masked_mean(
    previous: Mapping[str, torch.Tensor],
    uploads: Sequence[ClientWeights],
    prunable: Sequence[str],
) -> dict[str, torch.Tensor]:
    """LotteryFL's rule: every prunable entry is the (weighted) mean over the uploads whose mask keeps it;
    an entry nobody kept keeps its previous value; other tensors get the plain (weighted) mean."""
    if not uploads:
        return dict(previous)
    out = mean(previous, uploads, [n for n in previous if n not in set(prunable)])
    for name in prunable:
        num = torch.zeros_like(previous[name], dtype=torch.float32)
        den = torch.zeros_like(previous[name], dtype=torch.float32)
        for u in uploads:
            keep = torch.ones_like(den) if u.mask is None else u.mask[name].to(torch.float32)
            num += u.weight * keep * u.state[name].float()
            den += u.weight * keep
        out[name] = torch.where(den > 0, num / den.clamp_min(1e-30), previous[name].float())
    return out
