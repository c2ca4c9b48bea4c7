"""Wire codecs: bit-exact round trips for every lossless codec, labelled lossy value types, integrity checks,
auto never worse than any applicable codec, and Rice sizes close to the entropy bound."""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch
from flwr.app import Array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlottery.comm import rice
from fedlottery.comm.codec import (
    CODECS,
    VALUE_TYPES,
    CodecError,
    bound_bytes,
    codec_of,
    decode_tensor,
    encode_tensor,
    values_bytes_of,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASKED = ("bitmap", "indices", "rice", "delta", "known")

SHAPES = st.one_of(
    st.sampled_from([(), (0,), (1,), (7,), (1001,), (3, 0, 2), (5, 7), (2, 3, 4), (33, 31), (20000,)]),
    st.lists(st.integers(0, 24), min_size=1, max_size=3).map(tuple),
)
DENSITIES = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
SPECIALS = np.array([0x7FC00000, 0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0xFF800000, 0x80000000],
                    dtype=np.uint32).view(np.float32)  # NaNs with payloads, signalling NaN, +-inf, -0.0


def _case(shape, density, seed, special_frac):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    flat = rng.standard_normal(n).astype(np.float32)
    hit = rng.random(n) < special_frac
    flat[hit] = rng.choice(SPECIALS, size=int(hit.sum()))
    keep = rng.random(n) < density
    return torch.from_numpy(flat.reshape(shape)), torch.from_numpy(keep.reshape(shape)), rng


def _reference(kind: str, keep: torch.Tensor, rng) -> torch.Tensor | None:
    k = keep.numpy().reshape(-1)
    if kind == "none":
        return None
    if kind == "equal":
        return keep.clone()
    if kind == "unrelated":
        ref = rng.random(k.size) < rng.random()
    elif kind == "removals":  # keep = reference minus some of its entries
        ref = k | (rng.random(k.size) < rng.random())
    else:  # "regrowth": keep is a superset of reference
        ref = k & (rng.random(k.size) < rng.random())
    return torch.from_numpy(ref.reshape(keep.shape))


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int32).numpy() if t.dtype == torch.float32 else t.numpy()


def _expected(tensor: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    flat = tensor.numpy()
    return np.where(keep.numpy(), flat, np.zeros((), flat.dtype))


def _applicable(keep, reference) -> list[str]:
    names = ["bitmap", "indices", "rice"]
    if reference is not None:
        names.append("delta")
        if torch.equal(keep, reference):
            names.append("known")
    return names


@FAST
@given(shape=SHAPES, density=DENSITIES, seed=st.integers(0, 2**32 - 1), special=st.sampled_from([0.0, 0.2, 1.0]),
       ref_kind=st.sampled_from(["none", "equal", "unrelated", "removals", "regrowth"]))
def test_every_lossless_codec_is_a_bit_exact_roundtrip(shape, density, seed, special, ref_kind):
    tensor, keep, rng = _case(shape, density, seed, special)
    reference = _reference(ref_kind, keep, rng)
    expected = _expected(tensor, keep)
    for codec in _applicable(keep, reference) + ["auto"]:
        array = encode_tensor(tensor, keep, reference=reference, codec=codec)
        name, vtype = codec_of(array)
        assert vtype == "float32" and array.stype == f"fedlottery.{name}.f32" and tuple(array.shape) == shape
        assert codec in ("auto", name)
        out, got = decode_tensor(array, reference)
        assert out.dtype == torch.float32 and tuple(out.shape) == shape
        assert np.array_equal(_bits(out), expected.view(np.int32)), codec
        if got is None:  # only auto's "dense" for an all-kept mask
            assert name == "dense" and bool(keep.all())
        else:
            assert got.dtype == torch.bool and torch.equal(got, keep), codec
        assert values_bytes_of(array) == 4 * (int(keep.sum()) if got is not None else keep.numel())
    # no mask: dense, bit-exact including the specials
    out, got = decode_tensor(encode_tensor(tensor))
    assert got is None and np.array_equal(_bits(out), _bits(tensor))
    # "dense" with a mask sends every value (pruned ones as +0.0) and drops the mask
    out, got = decode_tensor(encode_tensor(tensor, keep, codec="dense"))
    assert got is None and np.array_equal(_bits(out), expected.view(np.int32))


@FAST
@given(shape=SHAPES, density=DENSITIES, seed=st.integers(0, 2**32 - 1),
       ref_kind=st.sampled_from(["none", "equal", "unrelated", "removals", "regrowth"]))
def test_auto_is_never_larger_than_any_applicable_codec(shape, density, seed, ref_kind):
    tensor, keep, rng = _case(shape, density, seed, 0.0)
    reference = _reference(ref_kind, keep, rng)
    auto = len(encode_tensor(tensor, keep, reference=reference).data)
    sizes = {c: len(encode_tensor(tensor, keep, reference=reference, codec=c).data)
             for c in _applicable(keep, reference)}
    assert auto <= min(sizes.values()), sizes
    if reference is None and bool(keep.all()):
        assert auto <= len(encode_tensor(tensor).data)


@FAST
@given(shape=SHAPES, density=DENSITIES, seed=st.integers(0, 2**32 - 1), vtype=st.sampled_from(["float16", "bfloat16"]),
       codec=st.sampled_from(["auto", "dense", "bitmap", "indices", "rice"]))
def test_lossy_value_types_are_labelled_and_within_precision(shape, density, seed, vtype, codec):
    tensor, keep, rng = _case(shape, density, seed, 0.0)
    flat = tensor.numpy().reshape(-1).copy()
    flat *= np.float32(10.0) ** rng.integers(-3, 4, size=flat.size).astype(np.float32)  # stay inside f16 range
    specials = rng.random(flat.size) < 0.1
    flat[specials] = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0], np.float32), size=int(specials.sum()))
    tensor = torch.from_numpy(flat.reshape(shape))
    array = encode_tensor(tensor, keep, codec=codec, values=vtype)
    name, got_vtype = codec_of(array)
    suffix = {"float16": "f16", "bfloat16": "bf16"}[vtype]
    assert got_vtype == vtype and array.stype.endswith("." + suffix) and array.dtype == "float32"
    out, got = decode_tensor(array)
    assert out.dtype == torch.float32
    exp = _expected(tensor, keep).reshape(-1)
    o = out.numpy().reshape(-1)
    rel = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[vtype]
    finite = np.isfinite(exp)
    assert np.array_equal(np.isnan(o), np.isnan(exp)) and np.array_equal(o[np.isinf(exp)], exp[np.isinf(exp)])
    assert np.all(np.abs(o[finite] - exp[finite]) <= rel * np.abs(exp[finite]) + 2.0**-24)
    assert np.array_equal(np.signbit(o[finite]), np.signbit(exp[finite]))
    width = 2
    n_values = keep.numel() if name == "dense" else int(keep.sum())
    assert values_bytes_of(array) == width * n_values
    if got is not None:
        assert torch.equal(got, keep)


@settings(max_examples=80, deadline=None)
@given(shape=st.sampled_from([(0,), (1,), (7,), (200,), (4, 9)]), density=DENSITIES,
       seed=st.integers(0, 2**32 - 1), codec=st.sampled_from(CODECS), vtype=st.sampled_from(VALUE_TYPES),
       where=st.floats(0.0, 1.0, exclude_max=True), flip=st.integers(1, 255))
def test_flipped_byte_or_truncation_raises(shape, density, seed, codec, vtype, where, flip):
    tensor, keep, _ = _case(shape, density, seed, 0.1)
    reference = keep.clone() if codec in ("known", "delta") else None
    array = encode_tensor(tensor, None if codec == "dense" else keep, reference=reference, codec=codec, values=vtype)
    data = array.data
    pos = int(where * len(data))
    corrupt = bytearray(data)
    corrupt[pos] ^= flip
    with pytest.raises(CodecError):
        decode_tensor(Array(array.dtype, array.shape, array.stype, bytes(corrupt)), reference)
    with pytest.raises(CodecError):
        decode_tensor(Array(array.dtype, array.shape, array.stype, data[:pos]), reference)
    # the same corruption with a "repaired" CRC must still fail cleanly or decode -- never crash otherwise
    body = bytes(corrupt[:-4]) if pos < len(data) - 4 else data[:-4]
    forged = body + struct.pack("<I", zlib.crc32(body))
    try:
        decode_tensor(Array(array.dtype, array.shape, array.stype, forged), reference)
    except CodecError:
        pass


def test_known_and_delta_need_a_consistent_reference():
    tensor, keep, rng = _case((50, 20), 0.3, 7, 0.0)
    reference = keep | torch.from_numpy(rng.random((50, 20)) < 0.2)
    for codec, ref in (("known", keep), ("delta", reference)):
        array = encode_tensor(tensor, keep, reference=ref, codec=codec)
        assert torch.equal(decode_tensor(array, ref)[1], keep)
        with pytest.raises(CodecError, match="reference"):
            decode_tensor(array)
        with pytest.raises(CodecError, match="entries"):
            decode_tensor(array, torch.ones(999, dtype=torch.bool))
        wrong = ref.clone().reshape(-1)
        wrong[int(torch.nonzero(wrong)[0, 0])] = False  # one entry fewer kept
        with pytest.raises(CodecError):
            decode_tensor(array, wrong.reshape(ref.shape))
    with pytest.raises(ValueError):
        encode_tensor(tensor, keep, codec="delta")
    with pytest.raises(ValueError):
        encode_tensor(tensor, keep, reference=reference, codec="known")


def test_bad_metadata_raises():
    tensor, keep, _ = _case((30,), 0.4, 1, 0.0)
    array = encode_tensor(tensor, keep, codec="rice")
    with pytest.raises(CodecError, match="stype"):
        decode_tensor(Array(array.dtype, array.shape, "numpy.ndarray", array.data))
    with pytest.raises(CodecError, match="shape"):
        decode_tensor(Array(array.dtype, (31,), array.stype, array.data))
    with pytest.raises(CodecError, match="dtype"):
        decode_tensor(Array("float64", array.shape, array.stype, array.data))
    with pytest.raises(CodecError, match="descriptor"):
        decode_tensor(Array(array.dtype, array.shape, "fedlottery.bitmap.f32", array.data))
    with pytest.raises(CodecError):
        decode_tensor(Array(array.dtype, array.shape, array.stype, b""))


def test_integer_bool_and_float64_tensors():
    counts = torch.tensor(123456789012, dtype=torch.int64)
    for t in (counts, torch.arange(-5, 6, dtype=torch.int64), torch.tensor([1, -2, 3], dtype=torch.int32),
              torch.tensor([[0, 255]], dtype=torch.uint8), torch.tensor([True, False, True])):
        for values in VALUE_TYPES:  # integer and bool tensors ignore the float value type
            array = encode_tensor(t, values=values)
            assert codec_of(array)[0] == "dense" and array.dtype == str(t.dtype).removeprefix("torch.")
            out, got = decode_tensor(array)
            assert got is None and out.dtype == t.dtype and torch.equal(out, t)
    ints, keep = torch.arange(10, dtype=torch.int64) - 3, torch.arange(10) % 3 == 0
    out, got = decode_tensor(encode_tensor(ints, keep, codec="rice"))
    assert torch.equal(got, keep) and torch.equal(out, torch.where(keep, ints, 0)) and out.dtype == torch.int64
    x = torch.tensor([1.0 / 3.0, 1e300, -0.0], dtype=torch.float64)
    out, _ = decode_tensor(encode_tensor(x))
    assert out.dtype == torch.float32 and torch.equal(out, x.to(torch.float32))


def test_header_is_small():
    n = 1_000_000
    tensor, keep = torch.randn(n), torch.rand(n) < 0.1
    values = 4 * int(keep.sum())
    assert len(encode_tensor(tensor, keep, reference=keep).data) == values + 4 + 3 + 4  # magic..n varint, crc
    assert len(encode_tensor(tensor, keep, codec="bitmap").data) == values + 4 + 3 + 4 + n // 8
    assert len(encode_tensor(tensor).data) == 4 * n + 11


def test_bound_bytes():
    assert bound_bytes(1000, 1.0, False) == 4000 and bound_bytes(1000, 0.0, False) == 0
    assert bound_bytes(1000, 0.5, False) == pytest.approx(2000 + 125)
    assert bound_bytes(1000, 0.5, True) == 2000 and bound_bytes(1000, 0.5, True, value_bits=16) == 1000


# ---- the Rice position coder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 1000])
def test_rice_positions_roundtrip_edge_cases(n):
    rng = np.random.default_rng(n)
    cases = [np.zeros(0, np.int64), np.arange(n)]
    if n:
        cases += [np.array([0]), np.array([n - 1]), np.flatnonzero(rng.random(n) < 0.3),
                  np.flatnonzero(rng.random(n) < 0.9), np.arange(0, n, 3)]
    for pos in cases:
        data = rice.encode_positions(pos, n)
        assert len(data) == rice.encoded_size(pos, n)
        assert np.array_equal(rice.decode_positions(data, n), pos)
        mask = np.zeros(n, bool)
        mask[pos] = True
        assert np.array_equal(rice.decode_mask(data, n), mask)
    assert len(rice.encode_positions(np.zeros(0, np.int64), n)) == 1  # empty set: one byte
    assert len(rice.encode_positions(np.arange(n), n)) == 1  # full set: one byte (complement is empty)


def test_rice_rejects_malformed_streams():
    data = rice.encode_positions(np.array([3, 10, 50]), 100)
    for bad in (data[:-1], data + b"\x00", b"", data[:1]):
        with pytest.raises(rice.RiceError):
            rice.decode_positions(bad, 100)
    with pytest.raises(rice.RiceError):
        rice.decode_positions(data, 50)  # position 50 out of range for n = 50
    with pytest.raises(ValueError):
        rice.encode_positions(np.array([5, 3]), 10)


@pytest.mark.parametrize("density", [0.5, 0.2, 0.1, 0.05, 0.01, 0.99])
def test_rice_mask_is_within_3_percent_of_the_entropy(density):
    n = 200_000
    mask = np.random.default_rng(42).random(n) < density
    d = mask.mean()  # the realised density: the entropy of the mask actually coded
    entropy_bits = n * -(d * math.log2(d) + (1 - d) * math.log2(1 - d))
    assert len(rice.encode_mask(mask)) * 8 <= 1.03 * entropy_bits


def test_delta_of_removals_is_much_smaller_than_a_full_mask():
    n = 200_000
    rng = np.random.default_rng(3)
    reference = rng.random(n) < 0.5
    keep = reference & (rng.random(n) >= 0.2)  # 20% of the kept entries removed
    tensor = torch.randn(n)
    k, r = torch.from_numpy(keep), torch.from_numpy(reference)
    delta = encode_tensor(tensor, k, reference=r, codec="delta")
    full = encode_tensor(tensor, k, codec="rice")
    def mask_part(a):
        return len(a.data) - values_bytes_of(a)

    assert mask_part(delta) < 0.5 * mask_part(full)
    assert codec_of(encode_tensor(tensor, k, reference=r))[0] == "delta"
    assert torch.equal(decode_tensor(delta, r)[1], k)
    # no change at all costs (almost) nothing besides the header
    same = encode_tensor(tensor, r, reference=r, codec="delta")
    assert mask_part(same) <= 4 + 3 + 3 + 4 + 1
