"""Compressed uplinks (`comm.uplink`): a client sends the update Delta = theta_client - theta_sent of every
floating-point tensor it uploads, quantised (`fedlottery.comm.quantize`) or sparse-ternary coded
(`fedlottery.comm.stc`); the server, which knows what it sent, rebuilds theta_sent + Delta-hat and from then on
treats the reply like any other (the same codecs, checks and aggregation).

Only the entries the strategy would upload are coded: under a keep-mask, Delta covers the kept entries (in
row-major order) and the mask travels as in `fedlottery.comm.codec` (nothing when the receiver holds it, else
the smallest Rice stream of the mask, of its change, or of its removals). Bool, integer and personal tensors
travel exactly as `pack_state` sends them.

One compressed tensor is a Flower Array (dtype float32, the tensor's shape, stype ``fedlottery-uplink.qsgd`` or
``fedlottery-uplink.stc``) whose data is, little-endian:

    magic b"FU" | version u8 = 1 | kind u8 (1 qsgd, 2 stc) | n varint (entries of the tensor)
    mask        u8 mode: 0 dense (no mask: every entry), 1 known (the receiver's reference),
                2 full / 3 change (keep xor reference) / 4 removals (among reference's kept), then for 2-4:
                varint length + that Rice stream (`fedlottery.comm.rice`)
    qsgd body   u8 bits b | u8 flags (bit 0: scale is max-norm, else l2; bit 1: zlib) | f32 scale |
                levels: fixed: ceil(m*b/8) bytes of l + s in b bits, MSB first; zlib: zlib of the levels as
                int8 (b <= 8) or int16, one per entry
    stc body    f32 mu | varint length + Rice stream of the k sent positions among the m kept entries |
                ceil(k/8) bytes of signs (1 = -mu), MSB first, zero padding
    crc32       u32 of everything before it

where m is the number of kept entries (n for mode 0). So a fixed-width b-bit tensor costs
(4 + varint(n) + 1 [+ mask]) + 7 + ceil(m*b/8) + 4 bytes, and an STC one
(4 + varint(n) + 1 [+ mask]) + 4 + varint(len) + len(positions) + ceil(k/8) + 4 bytes.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedlottery.comm import quantize, rice, stc
from fedlottery.comm.codec import CodecError, encode_tensor
from fedlottery.comm.payload import pack_state
from fedlottery.comm.rice import RiceError, read_varint, varint_bytes

STYPES = {1: "fedlottery-uplink.qsgd", 2: "fedlottery-uplink.stc"}
_KIND = {stype: kind for kind, stype in STYPES.items()}
_MAGIC, _VERSION = b"FU", 1
_DENSE, _KNOWN, _FULL, _CHANGE, _REMOVAL = range(5)
_F32, _CRC = struct.Struct("<f"), struct.Struct("<I")
_MAX_NORM, _ZLIB = 0x01, 0x02


def method_of(uplink: Any) -> str | None:
    """'quantize', 'stc' or None (uncompressed) for a `comm.uplink` section."""
    if uplink is None:
        return None
    return "quantize" if uplink.quantize is not None else "stc" if uplink.stc is not None else None


def is_update(array: Array) -> bool:
    """Whether an Array is a compressed update (this module's) rather than a `codec` tensor."""
    return isinstance(array.stype, str) and array.stype in _KIND


# ---- the mask part -------------------------------------------------------------------------------------------


def _mask_part(keep: np.ndarray | None, ref: np.ndarray | None) -> bytes:
    """The cheapest way to tell a receiver holding `ref` which entries `keep` keeps."""
    if keep is None:
        return bytes((_DENSE,))
    if ref is not None and np.array_equal(keep, ref):
        return bytes((_KNOWN,))
    plans = [(_FULL, rice.plan_mask(keep))]
    if ref is not None:
        plans.append((_CHANGE, rice.plan_mask(keep ^ ref)))
        if not np.any(keep & ~ref):
            plans.append((_REMOVAL, rice.plan_mask(~keep[ref])))
    mode, plan = min(plans, key=lambda p: (p[1].nbytes, p[0]))
    return bytes((mode,)) + varint_bytes(plan.nbytes) + rice.write(plan)


def _read_mask(data: bytes, off: int, end: int, n: int, ref: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    mode = data[off]
    off += 1
    if mode == _DENSE:
        return None, off
    if mode in (_KNOWN, _CHANGE, _REMOVAL) and ref is None:
        raise CodecError("compressed update: its mask is coded against a reference the receiver does not hold")
    if mode == _KNOWN:
        return ref.copy(), off
    if mode not in (_FULL, _CHANGE, _REMOVAL):
        raise CodecError(f"compressed update: unknown mask mode {mode}")
    stream, off = _read_sized(data, off, end)
    try:
        if mode == _FULL:
            return rice.decode_mask(stream, n), off
        if mode == _CHANGE:
            return ref ^ rice.decode_mask(stream, n), off
        keep = ref.copy()
        keep[ref] = ~rice.decode_mask(stream, int(ref.sum()))
        return keep, off
    except RiceError as err:
        raise CodecError(f"compressed update mask: {err}") from None


def _read_sized(data: bytes, off: int, end: int) -> tuple[bytes, int]:
    length, off = read_varint(data, off, end)
    if off + length > end:
        raise CodecError("compressed update truncated inside a length-prefixed stream")
    return data[off:off + length], off + length


# ---- level streams (qsgd) ------------------------------------------------------------------------------------


def _pack_fixed(offset_levels: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return offset_levels.astype(np.uint8).tobytes()
    if bits == 16:
        return offset_levels.astype(">u2").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    planes = ((offset_levels.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1)).tobytes()


def _unpack_fixed(stream: bytes, count: int, bits: int) -> np.ndarray:
    if len(stream) != (count * bits + 7) // 8:
        raise CodecError(f"compressed update: {len(stream)} level bytes, {(count * bits + 7) // 8} expected")
    raw = np.frombuffer(stream, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.int64)
    if bits == 16:
        return np.frombuffer(stream, dtype=">u2").astype(np.int64)
    planes = np.unpackbits(raw)
    if planes[count * bits:].any():
        raise CodecError("compressed update: non-zero padding bits after the levels")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return (planes[:count * bits].reshape(count, bits).astype(np.int64) << shifts).sum(axis=1)


def _level_stream(levels: np.ndarray, bits: int, coding: str) -> tuple[int, bytes]:
    """(flags, bytes) of the level stream: fixed width, zlib of one int per entry, or ("auto") the smaller."""
    s = quantize.levels_of(bits)
    fixed = _pack_fixed(levels + s, bits) if coding != "zlib" else None
    packed = zlib.compress(levels.astype("i1" if bits <= 8 else "<i2").tobytes(), 9) if coding != "fixed" else None
    if packed is not None and (fixed is None or len(packed) < len(fixed)):
        return _ZLIB, packed
    return 0, fixed


def _read_levels(stream: bytes, count: int, bits: int, flags: int) -> np.ndarray:
    s = quantize.levels_of(bits)
    if not flags & _ZLIB:
        levels = _unpack_fixed(stream, count, bits) - s
    else:
        width = 1 if bits <= 8 else 2
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(stream, count * width)  # never more than the levels announced
        except zlib.error as err:
            raise CodecError(f"compressed update: bad zlib level stream ({err})") from None
        if len(raw) != count * width or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise CodecError("compressed update: the zlib level stream does not hold exactly one level per entry")
        levels = np.frombuffer(raw, dtype="i1" if width == 1 else "<i2").astype(np.int64)
    if levels.size and int(np.abs(levels).max()) > s:
        raise CodecError(f"compressed update: a level beyond +-{s} for {bits} bits")
    return levels


# ---- one tensor ----------------------------------------------------------------------------------------------


def _assemble(kind: int, shape: tuple[int, ...], n: int, mask_part: bytes, body: bytes) -> Array:
    head = _MAGIC + bytes((_VERSION, kind)) + varint_bytes(n)
    payload = head + mask_part + body
    data = payload + _CRC.pack(zlib.crc32(payload))
    return Array(dtype="float32", shape=tuple(shape), stype=STYPES[kind], data=data)


def encode_quantized(delta: torch.Tensor, shape, keep: np.ndarray | None, ref: np.ndarray | None, bits: int,
                     scale: str, coding: str, generator: torch.Generator) -> Array:
    """A tensor's update over its kept entries (`delta`, 1-D), b-bit stochastically quantised."""
    value, levels = quantize.quantize(delta, bits, scale, generator)
    flags, stream = _level_stream(levels.numpy().astype(np.int64), bits, coding)
    flags |= _MAX_NORM if scale == "max" else 0
    body = bytes((bits, flags)) + _F32.pack(value) + stream
    return _assemble(1, shape, math.prod(shape), _mask_part(keep, ref), body)


def encode_ternary(delta: torch.Tensor, shape, keep: np.ndarray | None, ref: np.ndarray | None, fraction: float,
                   residual: torch.Tensor | None) -> tuple[Array, torch.Tensor]:
    """A tensor's update over its kept entries plus the residual withheld before, STC-coded; returns the Array
    and the new residual (over the same kept entries)."""
    ternary, left = stc.compress(delta, residual, fraction)
    positions = rice.encode_positions(ternary.positions.numpy(), ternary.n)
    signs = np.packbits(ternary.negative.numpy()).tobytes()
    body = _F32.pack(ternary.mu) + varint_bytes(len(positions)) + positions + signs
    return _assemble(2, shape, math.prod(shape), _mask_part(keep, ref), body), left


def decode_update(array: Array, reference: np.ndarray | None) -> tuple[np.ndarray | None, torch.Tensor]:
    """(keep mask or None for every entry, the decoded float32 update over the kept entries); CodecError on
    anything corrupt, truncated or inconsistent."""
    data = array.data
    kind = _KIND.get(array.stype)
    if kind is None or not isinstance(data, (bytes, bytearray)) or len(data) < 10:
        raise CodecError(f"not a compressed update (stype {array.stype!r}, {len(data or b'')} bytes)")
    end = len(data) - _CRC.size
    if zlib.crc32(data[:end]) != _CRC.unpack_from(data, end)[0]:
        raise CodecError("CRC32 mismatch: the compressed update is corrupted or truncated")
    if data[:2] != _MAGIC or data[2] != _VERSION or data[3] != kind:
        raise CodecError("compressed update: bad magic, version or kind")
    try:
        n, off = read_varint(data, 4, end)
        if n != math.prod(tuple(array.shape)):
            raise CodecError(f"compressed update announces {n} entries, its shape {tuple(array.shape)} has "
                             f"{math.prod(tuple(array.shape))}")
        keep, off = _read_mask(data, off, end, n, reference)
        count = n if keep is None else int(keep.sum())
        values = _decode_qsgd(data, off, end, count) if kind == 1 else _decode_stc(data, off, end, count)
    except (RiceError, IndexError, struct.error) as err:
        raise CodecError(f"compressed update: {err}") from None
    return keep, values


def _decode_qsgd(data: bytes, off: int, end: int, count: int) -> torch.Tensor:
    if off + 6 > end:
        raise CodecError("compressed update truncated before its quantisation header")
    bits, flags = data[off], data[off + 1]
    if not quantize.MIN_BITS <= bits <= quantize.MAX_BITS or flags & ~(_MAX_NORM | _ZLIB):
        raise CodecError(f"compressed update: bad quantisation header (bits {bits}, flags {flags:#x})")
    (scale,) = _F32.unpack_from(data, off + 2)
    levels = _read_levels(data[off + 6:end], count, bits, flags)
    return quantize.dequantize(scale, torch.from_numpy(levels), bits)


def _decode_stc(data: bytes, off: int, end: int, count: int) -> torch.Tensor:
    if off + 4 > end:
        raise CodecError("compressed update truncated before its STC magnitude")
    (mu,) = _F32.unpack_from(data, off)
    stream, off = _read_sized(data, off + 4, end)
    positions = rice.decode_positions(stream, count)
    signs = np.frombuffer(data[off:end], dtype=np.uint8)
    if signs.size != (positions.size + 7) // 8 or np.unpackbits(signs)[positions.size:].any():
        raise CodecError(f"compressed update: {signs.size} sign bytes for {positions.size} positions")
    negative = np.unpackbits(signs)[:positions.size].astype(bool)
    return stc.expand(stc.Ternary(count, torch.from_numpy(positions), torch.from_numpy(negative), mu))


def values_bytes(array: Array) -> int:
    """The papers' accounting of a compressed tensor: its value part (scale and levels, or mu and signs), no
    header, mask or positions. Reads the layout only (no CRC, no reference needed)."""
    data, end = array.data, len(array.data) - _CRC.size
    _, off = read_varint(data, 4, end)
    mode, off = data[off], off + 1
    if mode in (_FULL, _CHANGE, _REMOVAL):
        _, off = _read_sized(data, off, end)
    if _KIND[array.stype] == 1:
        return max(0, end - off - 2)  # the scale and the levels (bits and flags are header)
    _, signs_at = _read_sized(data, off + 4, end)
    return 4 + max(0, end - signs_at)


# ---- a whole upload ------------------------------------------------------------------------------------------


def _flat_keep(mask, name: str, shape) -> np.ndarray | None:
    if mask is None or name not in mask:
        return None
    return mask[name].detach().cpu().reshape(-1).numpy().astype(bool)


STATISTICS = ("running_mean", "running_var")  # BatchNorm's running averages, by state-dict name


def is_statistic(name: str) -> bool:
    """Whether state entry `name` is a BatchNorm running statistic (see UplinkConfig.statistics)."""
    return name.rsplit(".", 1)[-1] in STATISTICS


def travels_exact(name: str, uplink: Any) -> bool:
    """Whether a float state entry goes up uncompressed in a compressed-uplink run: a BatchNorm statistic
    when `comm.uplink.statistics` is "exact"."""
    return getattr(uplink, "statistics", "exact") == "exact" and is_statistic(name)


def _compressible(name: str, tensor: torch.Tensor, uplink: Any) -> bool:
    return tensor.is_floating_point() and not travels_exact(name, uplink)


def pack_upload(upload: Mapping[str, torch.Tensor], mask, reference, skip: frozenset[str], comm: Any,
                sent: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor],
                generator: torch.Generator) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """The client's uplink: `pack_state` when `comm.uplink` compresses nothing, else every float tensor's
    update against `sent` (what the server sent, as decoded here) compressed, the rest as `pack_state` sends
    it. Returns the record and the STC residuals to keep (full-shape tensors; {} for quantisation)."""
    method = method_of(getattr(comm, "uplink", None))
    if method is None:
        return pack_state(upload, mask, reference, skip, comm.codec, comm.values), {}
    plain = {n: t for n, t in upload.items() if n not in skip and not _compressible(n, t, comm.uplink)}
    exact = pack_state(plain, mask, reference, frozenset(), comm.codec, comm.values)
    record, left = ArrayRecord(), {}
    for name, tensor in upload.items():
        if name in skip:
            continue
        if name in exact:
            record[name] = exact[name]
            continue
        if name not in sent:
            raise ValueError(f"{name}: uploaded but never sent, so there is no update to compress")
        record[name], kept_left = _pack_one(name, tensor, mask, reference, comm.uplink, method, sent[name],
                                            residual.get(name), generator)
        if kept_left is not None:
            left[name] = kept_left
    return record, left


def _pack_one(name, tensor, mask, reference, uplink, method, sent, residual, generator):
    shape = tuple(int(s) for s in tensor.shape)
    keep, ref = _flat_keep(mask, name, shape), _flat_keep(reference, name, shape)
    delta = (tensor.detach().cpu().to(torch.float32) - sent.detach().cpu().to(torch.float32)).reshape(-1)
    index = torch.from_numpy(np.flatnonzero(keep)) if keep is not None else None
    kept = delta if index is None else delta[index]
    if method == "quantize":
        q = uplink.quantize
        return encode_quantized(kept, shape, keep, ref, q.bits, q.scale, q.coding, generator), None
    old = None
    if residual is not None and tuple(residual.shape) == shape:
        old = residual.detach().cpu().to(torch.float32).reshape(-1)
        old = old if index is None else old[index]
    array, left = encode_ternary(kept, shape, keep, ref, uplink.stc.fraction, old)
    full = left if index is None else torch.zeros(math.prod(shape)).index_put_((index,), left)
    return array, full.reshape(shape)


def rebuild_record(record: ArrayRecord, sent: Mapping[str, torch.Tensor], sent_mask, uplink: Any) -> ArrayRecord:
    """The server's side: every compressed update in `record` becomes theta_sent + Delta-hat, encoded as a plain
    float32 tensor under its mask (against `sent_mask`, the reference the client coded it against), so the
    usual reply checks and decoding apply to it. Raises CodecError on a forged or inconsistent update, or on a
    float tensor that came uncompressed when the run compresses its uplinks."""
    method = method_of(uplink)
    if method is None:
        return record
    wanted = STYPES[1 if method == "quantize" else 2]
    out = ArrayRecord()
    for name, array in record.items():
        if not is_update(array):
            if array.dtype == "float32" and name in sent and not travels_exact(name, uplink):
                raise CodecError(f"{name}: came uncompressed, but the run compresses uplinks ({method})")
            out[name] = array
            continue
        if travels_exact(name, uplink):
            raise CodecError(f"{name}: a compressed update, but the run sends BatchNorm statistics exact "
                             "(comm.uplink.statistics)")
        if array.stype != wanted or name not in sent:
            raise CodecError(f"{name}: a {array.stype} update, but the run sends {wanted} for the tensors it sent")
        out[name] = _rebuild_one(name, array, sent[name], sent_mask)
    return out


def _rebuild_one(name: str, array: Array, base: torch.Tensor, sent_mask) -> Array:
    shape = tuple(int(s) for s in base.shape)
    if tuple(array.shape) != shape:  # checked before decoding: never allocate a forged size
        raise CodecError(f"{name}: shape {tuple(array.shape)} != expected {shape}")
    ref = _flat_keep(sent_mask, name, shape)
    keep, values = decode_update(array, ref)
    flat = base.detach().cpu().to(torch.float32).reshape(-1)
    theta = flat + values if keep is None else torch.zeros_like(flat)
    if keep is not None:
        index = torch.from_numpy(np.flatnonzero(keep))
        theta[index] = flat[index] + values
    keep_t = None if keep is None else torch.from_numpy(keep).reshape(shape)
    ref_t = None if ref is None else torch.from_numpy(ref).reshape(shape)
    return encode_tensor(theta.reshape(shape), keep_t, ref_t, "auto")
