"""Checking client replies before anything in them reaches the server's state.

A reply is accepted only if it answers a message sent this round, once, from the partition it was sent to,
with an honest sample count, every expected tensor of the configured value type, finite values, a mask the
strategy allows and finite metrics of declared keys. Anything else raises `ReplyRejected` with a one-line
reason; the strategy drops the reply, counts it and goes on, so no reply can crash the server or move θ_g.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedlottery.comm.codec import CodecError, codec_of
from fedlottery.sparsity import Mask


class ReplyRejected(ValueError):
    """A client reply the server will not use; the message is the one-line reason."""


@dataclass
class Sent:
    """What the server sent one client this round (kept to check the reply against)."""

    partition_id: int
    mask: Mask  # the mask the client was told to use
    held: Mask  # the mask the client held (the reference its upload's mask news is coded against)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Fault|Interrupt|Exit)\b.*")


def one_line(reason: str, limit: int = 240) -> str:
    """The cause of a client error in one line: ANSI codes dropped, the last `SomeError: message` line of a
    traceback when there is one, else the last non-empty line."""
    text = _ANSI.sub("", str(reason)).replace("\\n", "\n")
    lines = [ln.strip(" '<>\"") for ln in text.splitlines() if ln.strip(" '<>\"")]
    if not lines:
        return "unknown client error"
    candidates = [ln for ln in lines if _EXCEPTION_LINE.match(ln) and "ClientAppException" not in ln]
    line = (candidates or lines)[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_count(value, low: int, high: int, key: str = "num-examples") -> int:
    """An integer in [low, high] (the server knows every partition's size)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value:
        raise ReplyRejected(f"{key} {value!r} is not an integer")
    if not low <= int(value) <= high:
        raise ReplyRejected(f"{key} {int(value)} outside [{low}, {high}] (this client's data)")
    return int(value)


def check_metrics(metrics: Mapping, bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Finite numbers, each of a declared key (a key ending in '*' declares a prefix) within its bounds."""
    checked = {}
    for key, value in metrics.items():
        rule = bounds.get(key) or next((b for k, b in bounds.items() if k.endswith("*") and key.startswith(k[:-1])),
                                       None)
        if rule is None:
            raise ReplyRejected(f"undeclared metric {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReplyRejected(f"metric {key!r} = {value!r} is not a finite number")
        if not rule[0] <= value <= rule[1]:
            raise ReplyRejected(f"metric {key!r} = {value} outside [{rule[0]}, {rule[1]}]")
        checked[key] = float(value)
    return checked


def content_of(reply: Message) -> tuple[ArrayRecord, MetricRecord]:
    """The reply's 'model' and 'metrics' records, or a rejection naming what is missing."""
    content = reply.content
    model, metrics = content.get("model"), content.get("metrics")
    if not isinstance(metrics, MetricRecord):
        raise ReplyRejected("reply has no 'metrics' record")
    if not isinstance(model, ArrayRecord):
        raise ReplyRejected("reply has no 'model' record")
    return model, metrics


def check_tensor_set(record: ArrayRecord, expected: set[str], value_types: Mapping[str, str]) -> None:
    """Exactly the expected tensors, each encoded with the value type the run uses (no silent casts)."""
    missing, extra = sorted(expected - set(record)), sorted(set(record) - expected)
    if missing:
        raise ReplyRejected(f"upload lacks tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if extra:
        raise ReplyRejected(f"upload has tensors the model lacks {extra[:3]}")
    for name, array in record.items():
        try:
            _, vtype = codec_of(array)
        except CodecError as err:
            raise ReplyRejected(f"{name}: {err}") from None
        if vtype != value_types[name]:
            raise ReplyRejected(f"{name}: values are {vtype}, the run sends {value_types[name]}")


def check_finite(state: Mapping[str, torch.Tensor], max_abs: float) -> None:
    """Finite values no larger than `max_abs` (a weight of 1e30 is an attack or a diverged client)."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ReplyRejected(f"{name}: {bad} non-finite value(s) (NaN or inf)")
        largest = float(tensor.abs().max()) if tensor.numel() else 0.0
        if largest > max_abs:
            raise ReplyRejected(f"{name}: |value| {largest:.3g} above the {max_abs:.3g} a weight may reach")


def check_mask(upload: Mask, sent: Mask, regrows: bool, min_density: float) -> None:
    """Within the mask sent (or, for a strategy that regrows, within its budget), and not below the
    density the strategy can reach in one round."""
    if regrows:
        if upload.num_kept() > sent.num_kept():
            raise ReplyRejected(f"mask keeps {upload.num_kept()} weights, more than the {sent.num_kept()} allowed")
    else:
        grown = sum(int((upload[n] & ~sent[n]).sum()) for n in sent)
        if grown:
            raise ReplyRejected(f"mask regrows {grown} weight(s) outside the mask it was sent")
    if upload.density() < min_density:
        raise ReplyRejected(f"mask density {upload.density():.4f} below the {min_density:.4f} this strategy allows")


def check_batchnorm(state: Mapping[str, torch.Tensor], batchnorm: Iterable[str]) -> None:
    """BatchNorm's running statistics as uploaded: every `running_var` finite and >= 0 (BatchNorm divides by
    its square root: one negative entry averaged into the global model turns that channel into NaN for every
    client it reaches), every `num_batches_tracked` a non-negative integer (it sets the momentum of a
    cumulative average). check_finite does not see them: they are no weights, and the counter is no float."""
    for name in batchnorm:
        tensor = state.get(name)
        if tensor is None:
            continue
        if name.endswith("running_var"):
            if not bool(torch.isfinite(tensor).all()):
                raise ReplyRejected(f"{name}: {int((~torch.isfinite(tensor)).sum())} non-finite running variance(s)")
            if bool((tensor < 0).any()):
                raise ReplyRejected(f"{name}: {int((tensor < 0).sum())} negative running variance(s) "
                                    f"(lowest {float(tensor.min()):.3g}); a variance is >= 0")
        elif name.endswith("num_batches_tracked"):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise ReplyRejected(f"{name}: a {str(tensor.dtype).removeprefix('torch.')} batch count; it must be "
                                    "an integer")
            if bool((tensor < 0).any()):
                raise ReplyRejected(f"{name}: negative batch count {int(tensor.min())}")
