"""Model state <-> ArrayRecord, sending prunable tensors as kept values (+ mask only when it is news)."""
from __future__ import annotations

from typing import Mapping

import torch
from flwr.app import ArrayRecord

from fedlottery.comm.codec import CodecError, decode_tensor, encode_tensor
from fedlottery.sparsity import Mask


def pack_state(
    state: Mapping[str, torch.Tensor], mask: Mask | None = None, send_mask: bool = True,
    skip: frozenset[str] = frozenset(),
) -> ArrayRecord:
    """Encode a state dict; tensors in `mask` travel sparse, the rest dense; names in `skip` stay home."""
    record = ArrayRecord()
    for name, tensor in state.items():
        if name in skip:
            continue
        keep = mask[name] if mask is not None and name in mask else None
        record[name] = encode_tensor(tensor, keep, send_mask)
    return record


def unpack_state(
    record: ArrayRecord, expected: Mapping[str, torch.Tensor], known_mask: Mask | None = None
) -> tuple[dict[str, torch.Tensor], Mask | None]:
    """Decode an ArrayRecord against the expected names/shapes; returns the state and the mask it carried
    (or `known_mask` when the sender relied on it). Raises CodecError on anything unexpected."""
    unknown = sorted(set(record) - set(expected))
    if unknown:
        raise CodecError(f"payload has tensors the model lacks: {unknown[:5]}")
    state, keeps = {}, {}
    for name, array in record.items():
        known = known_mask[name] if known_mask is not None and name in known_mask else None
        tensor, keep = decode_tensor(array, known)
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CodecError(f"{name}: shape {tuple(tensor.shape)} != expected {tuple(expected[name].shape)}")
        state[name] = tensor.to(expected[name].dtype)
        if keep is not None:
            keeps[name] = keep
    mask = Mask(keeps) if keeps else None
    return state, mask
