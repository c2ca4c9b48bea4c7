"""Sparse ternary compression of an update with error feedback (STC, Sattler et al., IEEE TNNLS 2020), as
plain tensor maths.

A client adds the residual R it withheld before to its update, keeps the top p fraction of the sum by
magnitude, and sends only those positions, each as +mu or -mu (mu = the mean magnitude of the kept entries).
What it did not send stays in R <- (update + R) - sent for its next upload, so no part of an update is lost,
only delayed; without R the small coordinates of every update would never reach the server.

No Flower types here; the wire format is `fedlottery.comm.uplink`'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Ternary:
    """What travels: sorted positions in [0, n), the sign of each (True: -mu) and the magnitude mu."""

    n: int
    positions: torch.Tensor  # int64, sorted
    negative: torch.Tensor  # bool, one per position
    mu: float


def kept_count(n: int, fraction: float) -> int:
    """How many entries of n an upload keeps: ceil(p * n), at least one of a non-empty tensor."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"STC fraction must be in (0, 1], got {fraction}")
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n)))


def compress(update: torch.Tensor, residual: torch.Tensor | None, fraction: float) -> tuple[Ternary, torch.Tensor]:
    """(what to send, the new residual) for a 1-D update; `residual` None means none withheld yet."""
    acc = update.detach().reshape(-1).to(torch.float32)
    if residual is not None:
        acc = acc + residual.reshape(-1).to(torch.float32)
    n = acc.numel()
    k = kept_count(n, fraction)
    positions = torch.sort(torch.topk(acc.abs(), k, sorted=False).indices).values if k else torch.zeros(0, dtype=torch.int64)
    chosen = acc[positions]
    mu = float(chosen.abs().double().mean()) if k else 0.0
    mu = float(torch.tensor(mu, dtype=torch.float32))  # the value the receiver reads back
    ternary = Ternary(n, positions, chosen < 0, mu)
    return ternary, acc - expand(ternary)


def expand(ternary: Ternary) -> torch.Tensor:
    """The dense 1-D float32 update the ternary message stands for (zeros off its positions)."""
    out = torch.zeros(ternary.n, dtype=torch.float32)
    signs = 1.0 - 2.0 * ternary.negative.to(torch.float32)
    out[ternary.positions] = signs * ternary.mu
    return out
