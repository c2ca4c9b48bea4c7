"""Run state as plain data: tensors, numbers, strings, lists, tuples and dicts, nothing else.

Why: a checkpoint must outlive the code that wrote it (a module moved or renamed must not break every saved
run) and must be safe to open (`torch.load(..., weights_only=True)` refuses anything but plain data, so a
crafted file cannot run code). So every object a strategy or the server keeps between rounds is turned into
plain data here, tagged with what it was, and rebuilt from it: masks travel bit-packed, RNGs as their state,
Flower's ArrayRecords as tensors. Anything else is refused with the attribute's name, so a new kind of state
is declared on purpose instead of pickled by accident.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from fedlottery.sparsity import Mask
from fedlottery.sparsity.mask_table import MaskTable

TAG = "__plain__"
_SCALARS = (bool, int, float, str, type(None))


class PlainStateError(TypeError):
    """A value that has no plain form (the message names where it sits)."""


def to_plain(value: Any, where: str = "state") -> Any:
    """`value` as plain data that `from_plain` turns back into an equal object."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise PlainStateError(f"{where}: a numpy array of Python objects has no plain form")
        return {TAG: "ndarray", "tensor": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mask):
        return {TAG: "mask", "packed": _packed(value)}
    if isinstance(value, MaskTable):
        return _mask_table(value)
    if isinstance(value, random.Random):
        return {TAG: "random", "state": value.getstate()}
    if isinstance(value, torch.Generator):
        return {TAG: "torch_generator", "state": value.get_state()}
    if isinstance(value, (set, frozenset)):
        return {TAG: type(value).__name__, "items": [to_plain(v, where) for v in sorted(value)]}
    if isinstance(value, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return _plain_dict(value, where)
    array_record = _array_record(value, where)
    if array_record is not None:
        return array_record
    raise PlainStateError(f"{where}: a {type(value).__module__}.{type(value).__qualname__} has no plain form; "
                          "keep checkpointed state as tensors, numbers, strings, masks and containers of them")


def from_plain(value: Any) -> Any:
    """The object `to_plain` was given (containers rebuilt, tagged values turned back into their kind)."""
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(from_plain(v) for v in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: from_plain(v) for k, v in value.items()}
    if kind == "ndarray":
        return value["tensor"].numpy().copy()
    if kind == "mask":
        return _mask(value["packed"])
    if kind == "mask_table":
        masks = [_mask(packed) for packed in value["masks"]]
        table = MaskTable()
        for pid, index in value["of"].items():
            table[pid] = masks[index]
        return table
    if kind == "random":
        generator = random.Random()
        generator.setstate(_tuples(value["state"]))
        return generator
    if kind == "torch_generator":
        return torch.Generator().set_state(value["state"])
    if kind in ("set", "frozenset"):
        items = [from_plain(v) for v in value["items"]]
        return set(items) if kind == "set" else frozenset(items)
    if kind == "array_record":
        from flwr.app import Array, ArrayRecord

        return ArrayRecord({k: Array(t.numpy().copy()) for k, t in value["arrays"].items()})
    raise PlainStateError(f"unknown plain-state tag {kind!r}: written by a newer fedlottery?")


def _plain_dict(value: dict, where: str) -> dict:
    out = {}
    for key, item in value.items():
        if not isinstance(key, (str, int, float, bool, type(None), tuple)):
            raise PlainStateError(f"{where}: a {type(key).__name__} key has no plain form")
        if key == TAG:
            raise PlainStateError(f"{where}: the key {TAG!r} is reserved")
        out[key] = to_plain(item, f"{where}[{key!r}]")
    return out


def _packed(mask: Mask) -> dict:
    return {name: {"shape": list(shape), "bits": torch.from_numpy(bits.copy())}
            for name, (shape, bits) in mask.to_packed().items()}


def _mask(packed: dict) -> Mask:
    return Mask.from_packed({name: (tuple(p["shape"]), p["bits"].numpy()) for name, p in packed.items()})


def _mask_table(table: MaskTable) -> dict:
    """Each distinct mask once (the table shares them), and which one each partition holds."""
    index_of: dict[bytes, int] = {}
    masks, of = [], {}
    for pid in table:
        mask = table[pid]
        key = b"".join(name.encode() + bits.tobytes() for name, (_, bits) in mask.to_packed().items())
        if key not in index_of:
            index_of[key] = len(masks)
            masks.append(_packed(mask))
        of[int(pid)] = index_of[key]
    return {TAG: "mask_table", "of": of, "masks": masks}


def _array_record(value: Any, where: str) -> dict | None:
    try:
        from flwr.app import ArrayRecord
    except ImportError:  # pragma: no cover - Flower is a dependency
        return None
    if not isinstance(value, ArrayRecord):
        return None
    return {TAG: "array_record", "arrays": {k: to_plain(a.numpy(), f"{where}[{k!r}]")["tensor"]
                                            for k, a in value.items()}}


def _tuples(value: Any) -> Any:
    """random.Random.setstate wants tuples all the way down."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
