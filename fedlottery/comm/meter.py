"""The byte meter: payload bytes of every message actually sent, per round, client and direction.

Payload bytes are everything a message carries (arrays, configs, metrics, keys: Flower's count_bytes);
values bytes are the papers' accounting (weight values of prunable tensors only, no masks or headers).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from flwr.app import ArrayRecord, Message, RecordDict

from fedlottery.comm.codec import values_bytes_of


def content_bytes(content: RecordDict) -> int:
    """Everything a message carries: arrays, configs and metrics, keys included (Flower's count_bytes)."""
    return sum(record.count_bytes() + len(key) for key, record in content.items())


def values_bytes(record: ArrayRecord, prunable: set[str]) -> int:
    """The papers' accounting: the weight values of prunable tensors sent (no masks, biases, keys)."""
    return sum(_values_of(array) for name, array in record.items() if name in prunable)


def _values_of(array) -> int:
    """A compressed update (comm.uplink) counts its value part; a codec tensor its kept values."""
    from fedlottery.comm import uplink  # uplink builds on payload, which the package imports after this module

    return uplink.values_bytes(array) if uplink.is_update(array) else values_bytes_of(array)


def broadcast_bytes(messages: Iterable[Message], key: str = "model") -> int:
    """The downlink's cost if identical `key` records went out once (one broadcast): each distinct model
    record counted once, every message's other records (per-client config) counted in full."""
    seen: set[bytes] = set()
    total = 0
    for message in messages:
        record = message.content[key]
        total += content_bytes(message.content) - record.count_bytes() - len(key)
        digest = hashlib.blake2b(digest_size=16)
        for name, array in record.items():
            digest.update(name.encode() + b"\0" + array.stype.encode() + b"\0" + str(array.shape).encode())
            digest.update(array.data)
        if digest.digest() not in seen:
            seen.add(digest.digest())
            total += record.count_bytes() + len(key)
    return total


@dataclass
class ByteMeter:
    """Totals keyed by (round, partition id, direction) with 'payload' and 'values' byte counts, plus the
    downlink per round as a broadcast would send it."""

    rows: dict = field(default_factory=lambda: defaultdict(lambda: {"payload": 0, "values": 0}))
    broadcast: dict[int, int] = field(default_factory=dict)

    def state_dict(self) -> dict:
        """Plain data for a checkpoint: one [round, partition, direction, payload, values] row per entry."""
        return {"rows": [[r, p, d, v["payload"], v["values"]] for (r, p, d), v in self.rows.items()],
                "broadcast": dict(self.broadcast)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ByteMeter":
        meter = cls()
        for r, p, d, payload, values in state["rows"]:
            meter.rows[(r, p, d)] = {"payload": payload, "values": values}
        meter.broadcast = dict(state["broadcast"])
        return meter

    def add(self, round_: int, partition: int, direction: str, payload: int, values: int = 0) -> None:
        entry = self.rows[(round_, partition, direction)]
        entry["payload"] += payload
        entry["values"] += values

    def add_broadcast(self, round_: int, payload: int) -> None:
        self.broadcast[round_] = self.broadcast.get(round_, 0) + payload

    def round_total(self, round_: int, direction: str, kind: str = "payload") -> int:
        return sum(v[kind] for (r, _, d), v in self.rows.items() if r == round_ and d == direction)

    def total(self, direction: str, kind: str = "payload") -> int:
        return sum(v[kind] for (_, _, d), v in self.rows.items() if d == direction)
