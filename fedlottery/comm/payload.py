"""Model state <-> ArrayRecord: prunable tensors travel as kept values plus only the mask news.

The sender names the mask the receiver already holds (`reference`); a tensor whose mask is unchanged then
carries values only, and a changed one carries the smallest of a full mask or its delta (codec 'auto').
A bool tensor is a mask in its own right (FedPM's uploaded sample): it travels as its kept positions alone.
"""
from __future__ import annotations

from typing import Mapping

import torch
from flwr.app import ArrayRecord

from fedlottery.comm.codec import MASK_CODECS, CodecError, decode_tensor, encode_mask, encode_tensor
from fedlottery.sparsity import Mask


def pack_state(
    state: Mapping[str, torch.Tensor], mask: Mask | None = None, reference: Mask | None = None,
    skip: frozenset[str] = frozenset(), codec: str = "auto", values: str = "float32",
) -> ArrayRecord:
    """Encode a state dict; tensors in `mask` travel sparse (against the receiver's `reference` mask), the
    rest dense; names in `skip` stay home. `values` other than float32 are lossy and apply to weights only.
    A bool tensor travels as a mask alone (its kept positions, no values: `encode_mask`)."""
    record = ArrayRecord()
    for name, tensor in state.items():
        if name in skip:
            continue
        if tensor.dtype == torch.bool:
            record[name] = encode_mask(tensor, codec if codec in MASK_CODECS else "auto")
            continue
        if mask is not None and name in mask:
            ref = reference[name] if reference is not None and name in reference else None
            keep = mask[name]
            chosen = "known" if ref is not None and torch.equal(ref, keep) else codec
            record[name] = encode_tensor(tensor, keep, ref, chosen, values)
        else:
            record[name] = encode_tensor(tensor)
    return record


def unpack_state(
    record: ArrayRecord, expected: Mapping[str, torch.Tensor], reference: Mask | None = None,
    prunable: frozenset[str] | set[str] = frozenset(),
) -> tuple[dict[str, torch.Tensor], Mask | None]:
    """Decode an ArrayRecord against the expected names/shapes, with `reference` the mask this side already
    holds. Returns the state and the mask of the `prunable` tensors it carried (a dense one keeps all;
    None when it carried none). Raises CodecError on anything unexpected."""
    unknown = sorted(set(record) - set(expected))
    if unknown:
        raise CodecError(f"payload has tensors the model lacks: {unknown[:5]}")
    state, keeps = {}, {}
    for name, array in record.items():
        want = expected[name]
        if tuple(array.shape) != tuple(want.shape):  # checked before decoding: never allocate a forged size
            raise CodecError(f"{name}: shape {tuple(array.shape)} != expected {tuple(want.shape)}")
        ref = reference[name] if reference is not None and name in reference else None
        tensor, keep = decode_tensor(array, ref)
        state[name] = tensor.to(want.dtype)
        if name in prunable:
            keeps[name] = keep if keep is not None else torch.ones(want.shape, dtype=torch.bool)
    return state, (Mask(keeps) if keeps else None)


def complete_mask(carried: Mask | None, held: Mask) -> Mask | None:
    """The mask `unpack_state` returned (of the prunable tensors that travelled), with every layer that did not
    travel taken from `held`, the mask this side already holds, in `held`'s order. A personal prunable tensor
    (FedPer's head weight) never travels, so its mask can only be the one both sides hold. None stays None
    (nothing travelled); a mask that covers `held` already is returned as it is."""
    if carried is None or all(name in carried for name in held):
        return carried
    return Mask({name: carried[name] if name in carried else held[name] for name in held})
