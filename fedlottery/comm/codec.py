"""Tensor codecs: dense float32, and kept values (+ bit-packed mask when the receiver lacks it).

Each encoding is the exact `data` of a Flower `Array` with its own `stype`, so Flower's `count_bytes()`
counts precisely the encoded bytes. Layout of the masked format (little-endian):
    magic b"FLM1" | flags u8 (bit0: mask included) | kept count u64 | [packed mask, ceil(n/8) bytes]
    | kept values float32 in row-major order of the kept positions
"""
from __future__ import annotations

import struct

import numpy as np
import torch
from flwr.app import Array

DENSE = "fedlottery.dense.f32"
MASKED = "fedlottery.masked.f32"
_MAGIC = b"FLM1"
_HEADER = struct.Struct("<4sBQ")


class CodecError(ValueError):
    """Bytes that cannot be decoded (corrupt, truncated, or a mask the receiver does not have)."""


def encode_tensor(tensor: torch.Tensor, keep: torch.Tensor | None = None, send_mask: bool = True) -> Array:
    """Encode `tensor` densely, or only its kept entries under `keep` (with the mask if `send_mask`)."""
    values = tensor.detach().cpu().to(torch.float32).contiguous()
    shape = tuple(values.shape)
    if keep is None:
        return Array(dtype="float32", shape=shape, stype=DENSE, data=values.numpy().astype("<f4").tobytes())
    flat_keep = keep.reshape(-1).cpu().numpy().astype(bool)
    kept = values.reshape(-1).numpy()[flat_keep].astype("<f4")
    parts = [_HEADER.pack(_MAGIC, 1 if send_mask else 0, len(kept))]
    if send_mask:
        parts.append(np.packbits(flat_keep).tobytes())
    parts.append(kept.tobytes())
    return Array(dtype="float32", shape=shape, stype=MASKED, data=b"".join(parts))


def decode_tensor(array: Array, known_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode to (dense tensor with zeros at pruned entries, keep-mask or None for dense)."""
    shape = tuple(array.shape)
    n = int(np.prod(shape, dtype=np.int64))
    data = array.data
    if array.stype == DENSE:
        if len(data) != 4 * n:
            raise CodecError(f"dense tensor of shape {shape} needs {4 * n} bytes, got {len(data)}")
        return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)), None
    if array.stype != MASKED:
        raise CodecError(f"unknown tensor encoding {array.stype!r}")
    if len(data) < _HEADER.size:
        raise CodecError("masked tensor truncated inside its header")
    magic, flags, count = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise CodecError("masked tensor has a bad magic number")
    offset = _HEADER.size
    if flags & 1:
        nbytes = (n + 7) // 8
        if len(data) < offset + nbytes:
            raise CodecError("masked tensor truncated inside its mask")
        keep = np.unpackbits(np.frombuffer(data, np.uint8, nbytes, offset), count=n).astype(bool)
        offset += nbytes
    elif known_keep is not None:
        if known_keep.numel() != n:
            raise CodecError(f"known mask has {known_keep.numel()} entries, tensor has {n}")
        keep = known_keep.reshape(-1).cpu().numpy().astype(bool)
    else:
        raise CodecError("tensor sent without its mask, and the receiver holds none")
    if int(keep.sum()) != count:
        raise CodecError(f"mask keeps {int(keep.sum())} entries but {count} values were announced")
    if len(data) != offset + 4 * count:
        raise CodecError(f"masked tensor should hold {offset + 4 * count} bytes, got {len(data)}")
    flat = np.zeros(n, dtype=np.float32)
    flat[keep] = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
    return torch.from_numpy(flat.reshape(shape)), torch.from_numpy(keep.reshape(shape))
