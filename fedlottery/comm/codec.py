"""Wire codecs for one tensor under a boolean keep-mask, close to the information-theoretic minimum of bytes.

Each encoding is the exact `data` of a Flower `Array(dtype, shape, stype, data)`, so Flower's `count_bytes()`
counts precisely the encoded bytes. `stype` is ``f"fedlottery.{codec}.{suffix}"``; the suffix names how the
values travel (``f32`` exact, ``f16`` / ``bf16`` LOSSY and opt-in; ``i8 i16 i32 i64 u8 b1`` exact, for
integer / bool tensors), so a lossy encoding is labelled on the wire. `Array.dtype` is the decoded dtype.

Codecs (the values part -- the kept values in row-major order -- is the same for all masked codecs):

    dense    all n values; decode returns (tensor, None). None means "everything kept".
    bitmap   the mask as n packed bits (MSB first, zero padding) + values
    indices  kept positions as gaps (p_i - p_{i-1} - 1) in LEB128 varints + values
    rice     the mask as a Golomb-Rice stream of its minority symbol (see `fedlottery.comm.rice`) + values
    delta    (receiver holds `reference`) only where keep differs from reference, Rice-coded; when every change
             is a removal they are coded among reference's kept positions (flag bit), otherwise in full space
    known    (receiver holds `reference` == keep) values only
    auto     dense if keep is None (or keep is all True and there is no reference); known if reference == keep;
             otherwise the smallest of bitmap / indices / rice / delta (sizes are computed exactly before
             anything is written, and only the winner is assembled)

A mask alone (`encode_mask`, suffix ``m``: no values part at all, e.g. FedPM's uploaded sample) travels as bitmap,
indices or rice; its header always carries the kept count, and it decodes to the boolean mask itself.

Layout (little-endian; every field after `descriptor` is validated when decoding):

    magic       2 bytes  b"FL"
    version     u8       1
    descriptor  u8       bits 0-2 codec id (index in CODECS), bits 3-6 value type id, bit 7 delta-removal flag
    n           varint   entries (must equal prod(array.shape))
    count       varint   kept entries -- only for indices / rice / delta and for every mask alone; dense: n, known
                         and bitmap: derived from the length of the values part (checked against the reference /
                         the bitmap)
    mask part   bytes    bitmap / varints / Rice stream (none for dense and known)
    values      bytes    count x value width
    crc32       u32      zlib.crc32 of everything before it

so the overhead over the mask and values parts is 4 + varint(n) [+ varint(count)] + 4 bytes (16 bytes at most
for n < 2**28). Any flipped byte or truncation fails the CRC and raises `CodecError`.
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import torch
from flwr.app import Array

from fedlottery.comm import rice
from fedlottery.comm.rice import RiceError, read_varint, varint_bytes, varint_len

__all__ = [
    "CODECS",
    "DENSE",
    "VALUE_TYPES",
    "CodecError",
    "bound_bytes",
    "codec_of",
    "decode_tensor",
    "encode_mask",
    "encode_tensor",
    "values_bytes_of",
]

CODECS = ("dense", "bitmap", "indices", "rice", "delta", "known")
VALUE_TYPES = ("float32", "float16", "bfloat16")  # float16 / bfloat16 are LOSSY, opt-in only
MASK_CODECS = ("bitmap", "indices", "rice")  # how a mask alone (no values) may travel
DENSE = "fedlottery.dense.f32"  # stype of a plain dense float32 tensor

_MAGIC = b"FL"
_VERSION = 1
_CRC = struct.Struct("<I")
_REMOVAL_FLAG = 0x80
_COUNTED = frozenset(("indices", "rice", "delta"))  # codecs whose header carries the kept count


class CodecError(ValueError):
    """Bytes that cannot be decoded (corrupt, truncated, unknown, or a mask the receiver does not have)."""


class _VType:
    """How values travel: wire dtype, width, decoded torch dtype."""

    def __init__(self, name: str, suffix: str, wire: str, torch_dtype: torch.dtype, lossy: bool = False,
                 width: int | None = None):
        self.name, self.suffix, self.wire, self.torch_dtype, self.lossy = name, suffix, wire, torch_dtype, lossy
        self.width = np.dtype(wire).itemsize if width is None else width
        self.dtype_name = str(torch_dtype).removeprefix("torch.")


_VTYPES = (
    _VType("float32", "f32", "<f4", torch.float32),
    _VType("float16", "f16", "<f2", torch.float32, lossy=True),
    _VType("bfloat16", "bf16", "<i2", torch.float32, lossy=True),
    _VType("int8", "i8", "i1", torch.int8),
    _VType("int16", "i16", "<i2", torch.int16),
    _VType("int32", "i32", "<i4", torch.int32),
    _VType("int64", "i64", "<i8", torch.int64),
    _VType("uint8", "u8", "u1", torch.uint8),
    _VType("bool", "b1", "u1", torch.bool),
    _VType("mask", "m", "u1", torch.bool, width=0),  # a mask alone: positions, no values (encode_mask)
)
_VT_BY_NAME = {vt.name: vt for vt in _VTYPES}
_VT_BY_SUFFIX = {vt.suffix: vt for vt in _VTYPES}
_VT_BY_TORCH = {torch.int8: "int8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
                torch.uint8: "uint8", torch.bool: "bool"}
_CODEC_ID = {name: i for i, name in enumerate(CODECS)}


# ---- public helpers ------------------------------------------------------------------------------------------


def bound_bytes(n: int, density: float, mask_known: bool, value_bits: int = 32) -> float:
    """Information-theoretic minimum: n*d*value_bits bits of values + (mask_known ? 0 : n*H(d)) bits, in bytes."""
    d = float(density)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"density {d} outside [0, 1]")
    entropy = 0.0 if d in (0.0, 1.0) else -(d * math.log2(d) + (1 - d) * math.log2(1 - d))
    bits = n * d * value_bits + (0.0 if mask_known else n * entropy)
    return bits / 8


def codec_of(array: Array) -> tuple[str, str]:
    """(codec name, value type name) from the Array's stype; CodecError if it is not one of ours."""
    stype = array.stype if isinstance(array.stype, str) else ""
    parts = stype.split(".")
    if len(parts) != 3 or parts[0] != "fedlottery" or parts[1] not in _CODEC_ID or parts[2] not in _VT_BY_SUFFIX:
        raise CodecError(f"unknown tensor encoding stype {array.stype!r}")
    return parts[1], _VT_BY_SUFFIX[parts[2]].name


def values_bytes_of(array: Array) -> int:
    """Bytes of weight values inside the encoding (count x value width); reads the header only (no CRC)."""
    codec, vname = codec_of(array)
    vt = _VT_BY_NAME[vname]
    header = _parse_header(array, codec, vt)
    return header.count * vt.width


# ---- encoding ------------------------------------------------------------------------------------------------


def _flat_bool(mask, n: int, what: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        arr = mask.detach().cpu().reshape(-1).numpy()
    else:
        arr = np.asarray(mask).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{what} has {arr.size} entries, tensor has {n}")
    return arr if arr.dtype == np.bool_ else arr != 0


def _flat_values(tensor: torch.Tensor, vt: _VType) -> np.ndarray:
    """Flat numpy array of the tensor in the wire representation's in-memory dtype (no copy when possible)."""
    t = tensor.detach().cpu().reshape(-1)
    if vt.name == "bfloat16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    if vt.name in ("float32", "float16"):
        return t.to(torch.float32).contiguous().numpy()  # float16 is cast after selecting the kept values
    return t.contiguous().numpy()


def _to_wire(values: np.ndarray, vt: _VType) -> np.ndarray:
    if vt.name == "float16":
        with np.errstate(over="ignore"):
            return values.astype("<f2")
    if vt.name == "bool":
        return values.view(np.uint8)
    return values.astype(vt.wire, copy=False)


def _leb128_sizes(values: np.ndarray) -> np.ndarray:
    sizes = np.ones(values.size, np.int64)
    if values.size:
        top = int(values.max())
        threshold = 1 << 7
        while threshold <= top:
            sizes += values >= threshold
            threshold <<= 7
    return sizes


def _leb128_encode(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    ends = np.cumsum(sizes)
    out = np.empty(int(ends[-1]) if sizes.size else 0, np.uint8)
    if not sizes.size:
        return out
    starts = ends - sizes
    for j in range(int(sizes.max())):
        sel = sizes > j if j else slice(None)
        v, more = values[sel], sizes[sel] > j + 1
        out[starts[sel] + j] = ((v >> (7 * j)) & 0x7F) | (more.astype(np.int64) << 7)
    return out


def _leb128_decode(body: np.ndarray, count: int) -> np.ndarray:
    terminators = np.flatnonzero(body < 0x80)
    if terminators.size != count:
        raise CodecError(f"indices: {terminators.size} varints in the mask part, {count} announced")
    if count == 0:
        if body.size:
            raise CodecError("indices: trailing bytes in the mask part")
        return np.zeros(0, np.int64)
    if int(terminators[-1]) != body.size - 1:
        raise CodecError("indices: truncated varint at the end of the mask part")
    starts = np.concatenate(([0], terminators[:-1] + 1))
    sizes = terminators - starts + 1
    if int(sizes.max()) > 9:
        raise CodecError("indices: over-long varint")
    values = (body[starts] & 0x7F).astype(np.int64)
    for j in range(1, int(sizes.max())):
        sel = sizes > j
        values[sel] |= (body[starts[sel] + j] & 0x7F).astype(np.int64) << (7 * j)
    return values


class _Candidate:
    """A mask part whose exact size is known before it is written."""

    def __init__(self, codec: str, size: int, write, removal: bool = False):
        self.codec, self.size, self.write, self.removal = codec, size, write, removal


def _candidate(codec: str, keep: np.ndarray, count: int, ref: np.ndarray | None, cache: dict) -> _Candidate:
    n = keep.size
    if codec == "bitmap":
        return _Candidate(codec, (n + 7) // 8, lambda: np.packbits(keep))
    if codec == "known":
        return _Candidate(codec, 0, lambda: b"")
    if codec == "indices":
        if "positions" not in cache:
            cache["positions"] = np.flatnonzero(keep)
        pos = cache["positions"]
        gaps = np.diff(pos, prepend=np.int64(-1)) - 1 if pos.size else pos.astype(np.int64)
        sizes = _leb128_sizes(gaps)
        return _Candidate(codec, int(sizes.sum()), lambda: _leb128_encode(gaps, sizes))
    if codec == "rice":
        plan = rice.plan_mask(keep)
        return _Candidate(codec, plan.nbytes, lambda: rice.write(plan))
    if codec == "delta":
        if ref is None:
            raise ValueError("codec 'delta' needs the reference mask the receiver holds")
        removal_only = not bool(np.any(keep & ~ref))
        plan = rice.plan_mask(~keep[ref]) if removal_only else rice.plan_mask(keep ^ ref)
        return _Candidate(codec, plan.nbytes, lambda: rice.write(plan), removal=removal_only)
    raise ValueError(f"unknown codec {codec!r}; choose from {CODECS} or 'auto'")


def _header(codec: str, vt: _VType, n: int, count: int, removal: bool = False) -> bytes:
    descriptor = _CODEC_ID[codec] | (_VTYPES.index(vt) << 3) | (_REMOVAL_FLAG if removal else 0)
    head = _MAGIC + bytes((_VERSION, descriptor)) + varint_bytes(n)
    return head + varint_bytes(count) if codec in _COUNTED or not vt.width else head


def _header_len(codec: str, n: int, count: int) -> int:
    return 4 + varint_len(n) + (varint_len(count) if codec in _COUNTED else 0)


def _assemble(parts, codec: str, vt: _VType, shape: tuple[int, ...]) -> Array:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    data = b"".join((*parts, _CRC.pack(crc)))
    return Array(dtype=vt.dtype_name, shape=shape, stype=f"fedlottery.{codec}.{vt.suffix}", data=data)


def _value_type(tensor: torch.Tensor, values: str) -> _VType:
    """How `tensor`'s values travel: floats as `values` asks, integers and bools exactly in their own dtype."""
    if values not in VALUE_TYPES:
        raise ValueError(f"unknown value type {values!r}; choose from {VALUE_TYPES}")
    if tensor.is_complex():
        raise ValueError("complex tensors are not supported")
    if tensor.is_floating_point():
        return _VT_BY_NAME[values]
    if tensor.dtype in _VT_BY_TORCH:
        return _VT_BY_NAME[_VT_BY_TORCH[tensor.dtype]]
    raise ValueError(f"unsupported tensor dtype {tensor.dtype}")


def _cheapest(keep: np.ndarray, n: int, count: int, ref: np.ndarray | None) -> _Candidate:
    """The smallest mask part (header included) among the codecs that can win; ties go to the earlier codec.

    Exact pruning: indices costs >= 1 byte per kept entry, so it cannot beat bitmap at count >= n/8;
    rice is skipped when a cheap lower bound on its size already reaches bitmap's (ties go to bitmap)."""
    cache: dict = {}
    bitmap_total = _header_len("bitmap", n, count) + (n + 7) // 8
    names = ["bitmap"]
    if _header_len("rice", n, count) + rice.mask_size_lower_bound(keep) < bitmap_total:
        names.append("rice")
    if count < n // 8:
        names.append("indices")
    if ref is not None:
        names.append("delta")
    cands = [_candidate(name, keep, count, ref, cache) for name in names]
    return min(cands, key=lambda c: (_header_len(c.codec, n, count) + c.size, CODECS.index(c.codec)))


def encode_tensor(
    tensor: torch.Tensor, keep: torch.Tensor | None = None, reference: torch.Tensor | None = None,
    codec: str = "auto", values: str = "float32",
) -> Array:
    """Encode `tensor` (only its kept entries under `keep`) as a Flower Array.

    `reference` is the keep-mask the receiver already holds (enables "known" and "delta"). `values` picks how
    floating-point values travel: "float32" (exact), or the LOSSY opt-ins "float16" / "bfloat16"; integer and
    bool tensors always travel exactly in their own dtype. Raises ValueError on misuse (unknown codec, a
    codec that needs a reference without one, masks of the wrong size).
    """
    vt = _value_type(tensor, values)
    shape = tuple(int(s) for s in tensor.shape)
    n = int(tensor.numel())
    flat = _flat_values(tensor, vt)
    kflat = None if keep is None else _flat_bool(keep, n, "keep")
    rflat = None if reference is None else _flat_bool(reference, n, "reference")

    if codec != "auto" and codec not in _CODEC_ID:
        raise ValueError(f"unknown codec {codec!r}; choose from {CODECS} or 'auto'")
    if kflat is None and codec not in ("auto", "dense"):
        raise ValueError(f"codec {codec!r} needs a keep mask")
    count = n if kflat is None else int(np.count_nonzero(kflat))

    if codec == "auto":
        if kflat is None or (rflat is None and count == n):
            codec = "dense"
        elif rflat is not None and np.array_equal(kflat, rflat):
            codec = "known"
    if codec == "dense":
        dense = flat if kflat is None or count == n else np.where(kflat, flat, flat.dtype.type(0))
        wire = _to_wire(dense, vt)
        return _assemble((_header("dense", vt, n, n), wire), "dense", vt, shape)
    if codec == "known" and (rflat is None or not np.array_equal(kflat, rflat)):
        raise ValueError("codec 'known' needs a reference mask equal to keep")
    chosen = _cheapest(kflat, n, count, rflat) if codec == "auto" else _candidate(codec, kflat, count, rflat, {})

    mask_part = chosen.write()
    wire = _to_wire(np.compress(kflat, flat) if count < n else flat, vt)  # compress: ~4x faster than flat[kflat]
    head = _header(chosen.codec, vt, n, count, chosen.removal)
    return _assemble((head, mask_part, wire), chosen.codec, vt, shape)


def encode_mask(keep: torch.Tensor, codec: str = "auto") -> Array:
    """Encode a boolean mask alone, with no values (stype ``fedlottery.<codec>.m``): the kept positions as a
    bitmap, LEB128 gaps or a Golomb-Rice stream ("auto": the smallest, sizes computed exactly). It decodes
    (`decode_tensor`) to the mask as a bool tensor, twice: (mask, mask). A Rice-coded iid mask of density p costs
    within about 3% of n*H(p) bits (1 bit per entry at most, with the bitmap)."""
    if codec != "auto" and codec not in MASK_CODECS:
        raise ValueError(f"a mask alone travels as one of {MASK_CODECS} or 'auto', not {codec!r}")
    vt = _VT_BY_NAME["mask"]
    shape = tuple(int(s) for s in keep.shape)
    n = int(keep.numel())
    kflat = _flat_bool(keep, n, "keep")
    count = int(np.count_nonzero(kflat))
    names = [codec] if codec != "auto" else ["bitmap", "rice"] + (["indices"] if count < n // 8 else [])
    cache: dict = {}
    cands = [_candidate(name, kflat, count, None, cache) for name in names]
    chosen = min(cands, key=lambda c: (c.size, CODECS.index(c.codec)))  # every mask header has the same length
    return _assemble((_header(chosen.codec, vt, n, count), chosen.write()), chosen.codec, vt, shape)


# ---- decoding ------------------------------------------------------------------------------------------------


class _Header:
    def __init__(self, n: int, count: int, offset: int, body_end: int, removal: bool):
        self.n, self.count, self.offset, self.body_end, self.removal = n, count, offset, body_end, removal


def _parse_header(array: Array, codec: str, vt: _VType) -> _Header:
    """Parse and validate the header; `offset`..`body_end` is the mask part, then values up to len - 4."""
    data = array.data
    shape = tuple(array.shape)
    n_shape = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if array.dtype != vt.dtype_name:
        raise CodecError(f"Array dtype {array.dtype!r} does not match its encoding ({vt.dtype_name} expected)")
    if len(data) < 4 + 1 + _CRC.size:
        raise CodecError(f"encoded tensor truncated: {len(data)} bytes")
    if data[:2] != _MAGIC:
        raise CodecError("encoded tensor has a bad magic number")
    if data[2] != _VERSION:
        raise CodecError(f"unsupported encoding version {data[2]} (this build reads {_VERSION})")
    descriptor = data[3]
    if descriptor & 0x07 != _CODEC_ID[codec] or (descriptor >> 3) & 0x0F != _VTYPES.index(vt):
        raise CodecError(f"header descriptor disagrees with stype {array.stype!r}")
    removal = bool(descriptor & _REMOVAL_FLAG)
    if removal and codec != "delta":
        raise CodecError("removal flag set on a non-delta encoding")
    end = len(data) - _CRC.size
    try:
        n, off = read_varint(data, 4, end)
        count = None
        if codec in _COUNTED or not vt.width:
            count, off = read_varint(data, off, end)
    except RiceError as exc:
        raise CodecError(f"bad header: {exc}") from None
    if n != n_shape:
        raise CodecError(f"header says {n} entries but the Array's shape {shape} has {n_shape}")
    if not vt.width:  # a mask alone: no values part, the count is in the header
        if codec not in MASK_CODECS:
            raise CodecError(f"a mask alone travels as {' / '.join(MASK_CODECS)}, not {codec!r}")
        if codec == "bitmap" and end - off != (n + 7) // 8:
            raise CodecError(f"bitmap mask: {end - off} bytes, {(n + 7) // 8} expected for {n} entries")
    elif codec == "dense":
        count = n
    elif codec in ("known", "bitmap"):
        mask_len = 0 if codec == "known" else (n + 7) // 8
        values_len = end - off - mask_len
        if values_len < 0 or values_len % vt.width:
            raise CodecError(f"{codec}: {values_len} bytes of values is not a whole number of {vt.name}")
        count = values_len // vt.width
    if count > n:
        raise CodecError(f"header announces {count} kept entries of {n}")
    body_end = end - count * vt.width
    if body_end < off:
        raise CodecError(f"encoded tensor truncated: {count} values announced, fewer bytes present")
    return _Header(n, count, off, body_end, removal)


def _check_crc(data: bytes) -> None:
    if len(data) < _CRC.size:
        raise CodecError(f"encoded tensor truncated: {len(data)} bytes")
    view = memoryview(data)
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(view[:-_CRC.size]) != stored:
        raise CodecError("CRC32 mismatch: the encoded tensor is corrupted or truncated")


def _reference_flat(reference, n: int, codec: str) -> np.ndarray:
    if reference is None:
        raise CodecError(f"{codec!r} encoding needs the receiver's reference mask, and none was given")
    ref = reference.detach().cpu().reshape(-1).numpy() if isinstance(reference, torch.Tensor) else (
        np.asarray(reference).reshape(-1))
    if ref.size != n:
        raise CodecError(f"reference mask has {ref.size} entries, the tensor has {n}")
    return ref if ref.dtype == np.bool_ else ref != 0


def _decode_mask(codec: str, body: np.ndarray, header: _Header, reference) -> np.ndarray:
    n, count = header.n, header.count
    if codec == "known":
        keep = _reference_flat(reference, n, codec)
        if int(np.count_nonzero(keep)) != count:
            raise CodecError(f"reference mask keeps {int(np.count_nonzero(keep))} entries, "
                             f"the sender sent {count} values for its mask")
        return keep.copy()
    if codec == "bitmap":
        if n % 8 and body[-1] & ((1 << (8 - n % 8)) - 1):
            raise CodecError("bitmap: non-zero padding bits")
        keep = np.unpackbits(body, count=n).view(bool)
    elif codec == "indices":
        gaps = _leb128_decode(body, count)
        if gaps.size:
            if int(gaps.max()) >= n:
                raise CodecError("indices: a position gap beyond the end of the tensor")
            pos = np.cumsum(gaps + 1) - 1
            if int(pos[-1]) >= n:
                raise CodecError(f"indices: position {int(pos[-1])} >= n = {n}")
        else:
            pos = gaps
        keep = np.zeros(n, bool)
        keep[pos] = True
    elif codec == "rice":
        try:
            keep = rice.decode_mask(body, n)
        except RiceError as exc:
            raise CodecError(f"rice mask: {exc}") from None
    elif codec == "delta":
        ref = _reference_flat(reference, n, codec)
        try:
            if header.removal:
                removed = rice.decode_mask(body, int(np.count_nonzero(ref)))
                keep = ref.copy()
                keep[ref] = ~removed
            else:
                keep = ref ^ rice.decode_mask(body, n)
        except RiceError as exc:
            raise CodecError(f"delta mask: {exc} (is the reference the one the sender used?)") from None
    else:  # pragma: no cover - codec names are validated by codec_of
        raise CodecError(f"codec {codec!r} carries no mask")
    kept = int(np.count_nonzero(keep))
    if kept != count:
        hint = " (is the reference the one the sender used?)" if codec == "delta" else ""
        raise CodecError(f"{codec}: mask keeps {kept} entries but {count} values were sent{hint}")
    return keep


def _values_to_numpy(raw: np.ndarray, vt: _VType) -> np.ndarray:
    """Wire values -> native numpy values of the decoded dtype (a fresh, writable array)."""
    if vt.name == "float16":
        return raw.astype(np.float32)
    if vt.name == "bfloat16":
        return torch.from_numpy(raw.astype(np.int16)).view(torch.bfloat16).to(torch.float32).numpy()
    if vt.name == "bool":
        if raw.size and int(raw.max()) > 1:
            raise CodecError("bool values other than 0/1")
        return raw.astype(bool)
    return raw.astype(raw.dtype.newbyteorder("="), copy=True)  # a bit-exact copy (NaN payloads, -0.0 kept)


def decode_tensor(array: Array, reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode to (dense tensor with +0.0 / 0 at pruned entries, keep mask) -- keep is None for "dense",
    meaning everything is kept. `reference` is the receiver's mask (needed by "known" and "delta").
    Floating-point encodings decode to float32, integer / bool ones to their own dtype.
    Raises CodecError on anything corrupt, truncated, unknown or inconsistent."""
    codec, vname = codec_of(array)
    vt = _VT_BY_NAME[vname]
    data = array.data
    if not isinstance(data, (bytes, bytearray)):
        raise CodecError("Array data is not bytes")
    _check_crc(data)
    header = _parse_header(array, codec, vt)
    shape = tuple(int(s) for s in array.shape)
    if not vt.width:  # a mask alone (encode_mask): the decoded tensor is the mask itself
        body = np.frombuffer(data, dtype=np.uint8, count=header.body_end - header.offset, offset=header.offset)
        keep = _decode_mask(codec, body, header, reference)
        return torch.from_numpy(keep).reshape(shape), torch.from_numpy(keep.copy()).reshape(shape)
    raw = np.frombuffer(data, dtype=vt.wire, count=header.count, offset=header.body_end)
    values = _values_to_numpy(raw, vt)
    if codec == "dense":
        if header.body_end != header.offset:
            raise CodecError("dense: unexpected bytes between header and values")
        return torch.from_numpy(values).reshape(shape), None
    body = np.frombuffer(data, dtype=np.uint8, count=header.body_end - header.offset, offset=header.offset)
    if codec == "known" and body.size:
        raise CodecError("known: unexpected bytes between header and values")
    keep = _decode_mask(codec, body, header, reference)
    if header.count == header.n:
        out = values
    else:
        out = np.zeros(header.n, dtype=values.dtype)
        out[np.flatnonzero(keep)] = values  # int positions: ~2.5x faster than a boolean-mask scatter
    return torch.from_numpy(out).reshape(shape), torch.from_numpy(keep).reshape(shape)
