"""The byte meter: payload bytes of every message actually sent, per round, client and direction."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, RecordDict

from fedlottery.comm.codec import DENSE, MASKED, _HEADER


def content_bytes(content: RecordDict) -> int:
    """Everything a message carries: arrays, configs and metrics, keys included (Flower's count_bytes)."""
    return sum(record.count_bytes() + len(key) for key, record in content.items())


def values_bytes(record: ArrayRecord, prunable: set[str]) -> int:
    """The papers' accounting: 4 bytes per weight value of prunable tensors sent (no masks, biases, keys)."""
    total = 0
    for name, array in record.items():
        if name not in prunable:
            continue
        if array.stype == DENSE:
            total += len(array.data)
        elif array.stype == MASKED:
            total += 4 * _HEADER.unpack_from(array.data)[2]
    return total


@dataclass
class ByteMeter:
    """Totals keyed by (round, partition id, direction) with 'payload' and 'values' byte counts."""

    rows: dict = field(default_factory=lambda: defaultdict(lambda: {"payload": 0, "values": 0}))

    def add(self, round_: int, partition: int, direction: str, payload: int, values: int = 0) -> None:
        entry = self.rows[(round_, partition, direction)]
        entry["payload"] += payload
        entry["values"] += values

    def round_total(self, round_: int, direction: str, kind: str = "payload") -> int:
        return sum(v[kind] for (r, _, d), v in self.rows.items() if r == round_ and d == direction)

    def total(self, direction: str, kind: str = "payload") -> int:
        return sum(v[kind] for (_, _, d), v in self.rows.items() if d == direction)
