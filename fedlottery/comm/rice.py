"""Golomb-Rice coding of sorted position sets (equivalently: of boolean masks), fully numpy-vectorized.

A set of m sorted unique positions in [0, n) is coded as the gaps between consecutive members
(g_0 = p_0, g_i = p_i - p_{i-1} - 1 >= 0). Each gap g is split by a Rice parameter k into a quotient
q = g >> k (unary: q zero bits then a one bit) and a k-bit remainder. For iid masks the gaps are geometric,
for which Rice codes are within a few per cent of the entropy. Only the *minority* symbol is coded: when more
than half of the n entries are members, the complement is coded instead and a polarity bit says so; a mask of
density 0.99 therefore costs what a mask of density 0.01 costs.

Stream layout (the data passed to `decode_*` must be exactly one stream, nothing before or after it):

    varint  (m << 1) | polarity        LEB128; m = members of the coded set, polarity 1 = complement coded
    u8      k                          only when m > 0
    bytes   remainders                 ceil(m*k/8) bytes: m fixed-width k-bit numbers, MSB first, zero padding
    bytes   unary quotients            ceil((m + sum q)/8) bytes, zero padding; the last byte holds the m-th one

Keeping quotients and remainders in two streams makes decoding vectorized: the quotients are the differences
of the positions of the one bits of the unary stream. The parameter k is chosen by exact minimisation of the
coded byte size over k in [0, floor(log2(mean gap)) + 2].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RiceError",
    "RicePlan",
    "decode_mask",
    "decode_positions",
    "encode_mask",
    "encode_positions",
    "encoded_size",
    "mask_size_lower_bound",
    "plan_mask",
    "plan_positions",
    "read_varint",
    "varint_bytes",
    "varint_len",
    "write",
]

_MAX_K = 56  # fields of <= 56 bits span <= 8 bytes, so one uint64 holds each


class RiceError(ValueError):
    """A Rice stream that is malformed (truncated, trailing bytes, positions out of range, ...)."""


# ---- scalar LEB128 varints (headers) -------------------------------------------------------------------------


def varint_len(value: int) -> int:
    """Bytes of the LEB128 varint of a non-negative int."""
    return max(1, (int(value).bit_length() + 6) // 7)


def varint_bytes(value: int) -> bytes:
    """LEB128 (unsigned, little-endian groups of 7 bits, high bit = more follows)."""
    value = int(value)
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def read_varint(data, offset: int, limit: int | None = None) -> tuple[int, int]:
    """Read a LEB128 varint at `offset` (not beyond `limit`); returns (value, offset after it)."""
    end = len(data) if limit is None else limit
    value, shift = 0, 0
    for i in range(offset, min(end, offset + 10)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > offset:
                raise RiceError("non-canonical varint (trailing zero group)")
            return value, i + 1
        shift += 7
    raise RiceError("truncated or over-long varint")


# ---- fixed-width bit fields ----------------------------------------------------------------------------------


def _spans(k: int):
    """For each of 8 consecutive k-bit fields (8 fields = k bytes): first byte, byte count, right shift."""
    for j in range(8):
        start = j * k
        first, last = start >> 3, (start + k - 1) >> 3
        span = last - first + 1
        yield j, first, span, 8 * span - (start & 7) - k


def _pack_fixed(values: np.ndarray, k: int) -> np.ndarray:
    """m non-negative ints < 2**k -> ceil(m*k/8) packed bytes, each field k bits MSB first, back to back.

    Groups of 8 fields fill exactly k bytes, so each of the 8 field slots is handled by a few vectorized
    column operations over the m/8 groups (no per-bit expansion)."""
    m = int(values.size)
    if k == 0 or m == 0:
        return np.zeros(0, np.uint8)
    groups = -(-m // 8)
    fields = np.zeros(groups * 8, np.uint64)
    fields[:m] = values
    fields = fields.reshape(groups, 8)
    rows = np.zeros((groups, k), np.uint8)
    for j, first, span, shift in _spans(k):
        word = fields[:, j] << np.uint64(shift)
        for c in range(span):
            rows[:, first + c] |= (word >> np.uint64(8 * (span - 1 - c))).astype(np.uint8)
    return rows.reshape(-1)[: (m * k + 7) // 8]


def _unpack_fixed(data: np.ndarray, m: int, k: int) -> np.ndarray:
    """Inverse of `_pack_fixed`; checks the zero padding."""
    if k == 0 or m == 0:
        return np.zeros(m, np.int64)
    tail = (m * k) % 8
    if tail and int(data[-1]) & ((1 << (8 - tail)) - 1):
        raise RiceError("non-zero padding after the remainder bits")
    groups = -(-m // 8)
    rows = np.zeros(groups * k, np.uint8)
    rows[: data.size] = data
    rows = rows.reshape(groups, k)
    fields = np.empty((groups, 8), np.uint64)
    low = np.uint64((1 << k) - 1)
    for j, first, span, shift in _spans(k):
        word = rows[:, first].astype(np.uint64)
        for c in range(1, span):
            word = (word << np.uint64(8)) | rows[:, first + c]
        fields[:, j] = (word >> np.uint64(shift)) & low
    return fields.reshape(-1)[:m].astype(np.int64)


# ---- planning (exact size, chosen k) and writing -------------------------------------------------------------


@dataclass(frozen=True)
class RicePlan:
    """Everything needed to write a stream; `nbytes` is its exact size, known before writing."""

    n: int
    polarity: int
    coded: np.ndarray  # sorted int64 positions of the coded (minority) set
    gaps: np.ndarray  # their gaps
    k: int
    nbytes: int

    @property
    def members(self) -> int:
        """Members of the *original* set (before the polarity flip)."""
        m = int(self.gaps.size)
        return self.n - m if self.polarity else m


def _plan_coded(coded: np.ndarray, n: int, polarity: int) -> RicePlan:
    m = int(coded.size)
    head = varint_len((m << 1) | polarity)
    if m == 0:
        return RicePlan(n, polarity, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, head)
    coded = coded.astype(np.int64, copy=False)
    gaps = np.empty_like(coded)
    gaps[0] = coded[0]
    np.subtract(coded[1:], coded[:-1], out=gaps[1:])
    gaps[1:] -= 1
    total = int(coded[-1]) + 1 - m  # sum of the gaps
    mean = total / m
    k_hi = min(_MAX_K, (math.floor(math.log2(mean)) + 2) if mean >= 1 else 1)
    best_k, best = 0, None
    for k in range(k_hi + 1):
        quot = total if k == 0 else int((gaps >> k).sum())
        size = head + 1 + (m * k + 7) // 8 + (m + quot + 7) // 8
        if best is None or size < best:
            best_k, best = k, size
    return RicePlan(n, polarity, coded, gaps, best_k, best)


def plan_mask(mask: np.ndarray) -> RicePlan:
    """Plan the stream of a 1-D boolean mask (its True positions), coding the minority symbol."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    n = int(mask.size)
    members = int(np.count_nonzero(mask))
    polarity = 1 if members > n - members else 0
    coded = np.flatnonzero(~mask) if polarity else np.flatnonzero(mask)
    return _plan_coded(coded, n, polarity)


def plan_positions(positions: np.ndarray, n: int) -> RicePlan:
    """Plan the stream of sorted unique positions in [0, n)."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    n = int(n)
    if pos.size and (pos[0] < 0 or pos[-1] >= n or (pos.size > 1 and not bool((np.diff(pos) > 0).all()))):
        raise ValueError("positions must be sorted, unique and within [0, n)")
    if pos.size > n - pos.size:
        mask = np.zeros(n, dtype=bool)
        mask[pos] = True
        return plan_mask(mask)
    return _plan_coded(pos, n, 0)


def mask_size_lower_bound(mask: np.ndarray) -> int:
    """A cheap lower bound on `plan_mask(mask).nbytes` (no pass over the positions): it uses only the
    minority count m and the last minority position, and q = g >> k >= (g - 2**k + 1) / 2**k."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    n = int(mask.size)
    members = int(np.count_nonzero(mask))
    polarity = 1 if members > n - members else 0
    m = n - members if polarity else members
    head = varint_len((m << 1) | polarity)
    if m == 0:
        return head
    tail = mask[::-1]
    last = n - 1 - int(np.argmin(tail) if polarity else np.argmax(tail))  # last member of the coded set
    total = last + 1 - m
    best = None
    for k in range(min(_MAX_K, total.bit_length() + 1) + 1):
        quot = max(0, -(-(total - m * ((1 << k) - 1)) >> k))
        bits = m * (k + 1) + quot
        size = head + 1 + (bits + 7) // 8
        best = size if best is None else min(best, size)
    return best


def write(plan: RicePlan) -> bytes:
    """Write a planned stream (exactly `plan.nbytes` bytes)."""
    m = int(plan.gaps.size)
    head = varint_bytes((m << 1) | plan.polarity)
    if m == 0:
        return head
    k = plan.k
    gaps = plan.gaps
    rem = _pack_fixed(gaps & ((1 << k) - 1), k) if k else np.zeros(0, np.uint8)
    # bit index of each terminating one; with k = 0 these are the coded positions themselves
    ends = np.cumsum((gaps >> k) + 1) - 1 if k else plan.coded
    nbits = int(ends[-1]) + 1
    bits = np.zeros(((nbits + 7) // 8) * 8, np.uint8)
    bits[ends] = 1
    out = b"".join((head, bytes((k,)), rem.tobytes(), np.packbits(bits).tobytes()))
    assert len(out) == plan.nbytes, (len(out), plan.nbytes)
    return out


def encode_mask(mask: np.ndarray) -> bytes:
    """Rice stream of a boolean mask's True positions."""
    return write(plan_mask(mask))


def encode_positions(positions: np.ndarray, n: int) -> bytes:
    """Rice stream of sorted unique int positions in [0, n); the count is part of the stream."""
    return write(plan_positions(positions, n))


def encoded_size(positions: np.ndarray, n: int) -> int:
    """Exact size of `encode_positions(positions, n)` without writing it."""
    return plan_positions(positions, n).nbytes


# ---- decoding ------------------------------------------------------------------------------------------------


def _decode_coded(data, n: int) -> tuple[np.ndarray, int]:
    """-> (coded positions, polarity), fully validated."""
    buf = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    if len(buf) == 0:
        raise RiceError("empty Rice stream")
    head, off = read_varint(buf, 0)
    m, polarity = head >> 1, head & 1
    if m > n:
        raise RiceError(f"Rice stream announces {m} positions for {n} entries")
    if m == 0:
        if off != len(buf):
            raise RiceError(f"{len(buf) - off} trailing bytes after an empty Rice stream")
        return np.zeros(0, np.int64), polarity
    if off >= len(buf):
        raise RiceError("Rice stream truncated before its parameter k")
    k = buf[off]
    off += 1
    if k > _MAX_K:
        raise RiceError(f"Rice parameter k={k} is out of range")
    arr = np.frombuffer(buf, dtype=np.uint8)
    rem_len = (m * k + 7) // 8
    if off + rem_len >= len(arr):
        raise RiceError("Rice stream truncated inside its remainders or quotients")
    rem = _unpack_fixed(arr[off:off + rem_len], m, k)
    unary = arr[off + rem_len:]
    ones = np.flatnonzero(np.unpackbits(unary).view(bool))
    if ones.size != m:
        raise RiceError(f"Rice stream has {ones.size} unary terminators, expected {m}")
    if int(ones[-1]) // 8 != unary.size - 1:
        raise RiceError("Rice stream has trailing bytes after its last quotient")
    if k == 0:
        pos = ones  # unary terminators are the positions themselves
    else:
        quot = np.diff(ones, prepend=np.int64(-1)) - 1
        if int(quot.max()) > ((n - 1) >> k):
            raise RiceError("Rice stream codes a gap beyond the end of the tensor")
        pos = np.cumsum((quot << k) | rem) + np.arange(1, m + 1) - 1
    if int(pos[-1]) >= n:
        raise RiceError(f"Rice stream codes position {int(pos[-1])} >= n = {n}")
    return pos, polarity


def decode_mask(data, n: int) -> np.ndarray:
    """Boolean mask of n entries from a Rice stream."""
    pos, polarity = _decode_coded(data, int(n))
    mask = np.zeros(int(n), dtype=bool)
    mask[pos] = True
    if polarity:
        np.logical_not(mask, out=mask)
    return mask


def decode_positions(data, n: int) -> np.ndarray:
    """Sorted unique int64 positions in [0, n) from a Rice stream."""
    pos, polarity = _decode_coded(data, int(n))
    if not polarity:
        return pos
    mask = np.ones(int(n), dtype=bool)
    mask[pos] = False
    return np.flatnonzero(mask)
