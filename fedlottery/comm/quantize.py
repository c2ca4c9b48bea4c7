"""Unbiased stochastic quantisation of an update (QSGD-style, Alistarh et al. 2017), as plain tensor maths.

With b bits an entry travels as a signed level l in [-s, s], s = 2**(b-1) - 1 (b = 8: s = 127), and decodes to
scale * l / s. The level's magnitude is floor(r) or floor(r) + 1, r = s * |x| / scale, the upper one with
probability r - floor(r), so E[decoded] = x exactly: the server's average of many clients' updates is not
pulled towards zero, which a round-to-nearest quantiser would do for small entries.

`scale` is either ||x||_2 (the paper's choice) or max |x| ("max", the default here): with few levels the
Euclidean norm leaves almost every level at 0 or 1 (|x_i| / ||x||_2 ~ 1/sqrt(n)), so the max-norm has far lower
variance for the same bits. A non-finite update (a diverged client) gets a NaN scale, so every decoded value is
NaN and the server's finiteness check rejects it instead of the quantiser hiding it.

No Flower types here; the wire format is `fedlottery.comm.uplink`'s.
"""
from __future__ import annotations

import math

import torch

SCALES = ("max", "l2")
MIN_BITS, MAX_BITS = 2, 16


def levels_of(bits: int) -> int:
    """s, the largest level magnitude b bits carry with the sign (2s + 1 values <= 2**b)."""
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"quantisation bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return 2 ** (int(bits) - 1) - 1


def scale_of(x: torch.Tensor, kind: str) -> float:
    """The float32 scale the levels are relative to (NaN when x is not finite, 0 for an all-zero x)."""
    if kind not in SCALES:
        raise ValueError(f"unknown quantisation scale {kind!r}; choose from {SCALES}")
    if x.numel() == 0:
        return 0.0
    x64 = x.detach().double()
    value = float(x64.abs().max()) if kind == "max" else float(torch.linalg.vector_norm(x64))
    if not math.isfinite(value) or not bool(torch.isfinite(x64).all()):
        return math.nan
    return float(torch.tensor(value, dtype=torch.float32))  # the value the receiver reads back


def quantize(x: torch.Tensor, bits: int, kind: str, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """(scale, levels): int32 levels in [-s, s] with E[scale * levels / s] = x (1-D float input)."""
    s = levels_of(bits)
    scale = scale_of(x, kind)
    flat = x.detach().reshape(-1).double()
    if scale == 0.0 or not math.isfinite(scale):
        return scale, torch.zeros(flat.numel(), dtype=torch.int32)
    r = (flat.abs() * (s / scale)).clamp_(max=float(s))
    low = torch.floor(r)
    up = torch.rand(r.shape, generator=generator, dtype=torch.float64) < (r - low)
    magnitude = (low + up.double()).clamp_(max=float(s))
    return scale, (torch.sign(flat) * magnitude).to(torch.int32)


def dequantize(scale: float, levels: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 values levels stand for: scale * l / s (NaN everywhere when the scale is NaN)."""
    s = levels_of(bits)
    return (levels.double() * (float(scale) / s)).to(torch.float32)
