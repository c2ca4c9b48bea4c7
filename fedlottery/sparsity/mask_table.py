"""The server's per-client masks, bit-packed and shared: n/8 bytes per distinct mask, O(1) per client.

A server keeps one mask per client (and the one each client holds); with 10,000 clients and a CNN that is
gigabytes as bool tensors. Here a mask is stored once per distinct content (bit-packed, keyed by a digest)
and clients refer to it, so clients that share a mask (the dense start, FLASH's one mask) cost nothing extra.
Reading a client's mask unpacks it (a fraction of a millisecond for ~10^5 weights): callers read the masks
of the clients in a round, not of everyone.
"""
from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from typing import Iterator

import numpy as np

from fedlottery.sparsity.mask import Mask


class _Packed:
    """One distinct mask: its bit-packed tensors and cached statistics."""

    __slots__ = ("packed", "density", "users")

    def __init__(self, mask: Mask):
        self.packed = mask.to_packed()
        self.density = mask.density()
        self.users = 0


def _digest(packed: dict[str, tuple[tuple[int, ...], np.ndarray]]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name, (shape, bits) in packed.items():
        h.update(name.encode() + b"\0" + repr(shape).encode() + b"\0")
        h.update(bits.tobytes())
    return h.digest()


class MaskTable(MutableMapping):
    """partition id -> Mask, stored bit-packed and deduplicated; `density(pid)` without unpacking."""

    def __init__(self, initial: dict[int, Mask] | None = None):
        self._of: dict[int, bytes] = {}
        self._masks: dict[bytes, _Packed] = {}
        for pid, mask in (initial or {}).items():
            self[pid] = mask

    def __setitem__(self, pid: int, mask: Mask) -> None:
        self.assign([pid], mask)

    def assign(self, pids, mask: Mask) -> None:
        """Give every client in `pids` the same mask (packed once)."""
        entry = _Packed(mask)
        key = _digest(entry.packed)
        entry = self._masks.setdefault(key, entry)
        for pid in pids:
            entry.users += 1
            if pid in self._of:
                self._release(self._of[pid])
            self._of[pid] = key

    def __getitem__(self, pid: int) -> Mask:
        return Mask.from_packed(self._masks[self._of[pid]].packed)

    def __delitem__(self, pid: int) -> None:
        self._release(self._of.pop(pid))

    def __iter__(self) -> Iterator[int]:
        return iter(self._of)

    def __len__(self) -> int:
        return len(self._of)

    def _release(self, key: bytes) -> None:
        entry = self._masks[key]
        entry.users -= 1
        if entry.users == 0:
            del self._masks[key]

    def density(self, pid: int) -> float:
        return self._masks[self._of[pid]].density

    def distinct(self) -> int:
        """How many different masks are stored."""
        return len(self._masks)

    def packed_bytes(self) -> int:
        """Bytes of bit-packed mask data held (n/8 per distinct mask)."""
        return sum(bits.nbytes for e in self._masks.values() for _, bits in e.packed.values())
