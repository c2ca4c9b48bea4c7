"""Wire payloads: exact round trips, the mask only when sent, clear errors on bad bytes."""
import pytest
import torch
from flwr.app import Array

from fedlottery.comm import CodecError, decode_tensor, encode_tensor, pack_state, unpack_state, values_bytes
from fedlottery.comm.codec import MASKED
from fedlottery.sparsity import Mask


def test_dense_and_masked_roundtrip():
    t = torch.randn(7, 5)
    keep = torch.rand(7, 5) > 0.6
    dense, mask = decode_tensor(encode_tensor(t))
    assert torch.equal(dense, t) and mask is None
    arr = encode_tensor(t * keep, keep)
    assert len(arr.data) == 13 + 5 + 4 * int(keep.sum())  # header + ceil(35/8) mask bytes + values
    out, got = decode_tensor(arr)
    assert torch.equal(got, keep) and torch.equal(out, t * keep)


def test_mask_omitted_needs_the_known_mask():
    t, keep = torch.randn(20), torch.rand(20) > 0.5
    arr = encode_tensor(t, keep, send_mask=False)
    assert len(arr.data) == 13 + 4 * int(keep.sum())
    with pytest.raises(CodecError, match="holds none"):
        decode_tensor(arr)
    out, got = decode_tensor(arr, keep)
    assert torch.equal(out, t * keep)
    with pytest.raises(CodecError):
        decode_tensor(arr, ~keep if int((~keep).sum()) != int(keep.sum()) else torch.zeros(20, dtype=torch.bool))


@pytest.mark.parametrize("cut", [3, 14, -1])
def test_truncated_or_corrupt_bytes_raise(cut):
    t, keep = torch.randn(30), torch.rand(30) > 0.3
    arr = encode_tensor(t, keep)
    bad = Array(dtype="float32", shape=(30,), stype=MASKED, data=arr.data[:cut])
    with pytest.raises(CodecError):
        decode_tensor(bad)
    with pytest.raises(CodecError):
        decode_tensor(Array(dtype="float32", shape=(30,), stype=MASKED, data=b"BAD!" + arr.data[4:]))
    with pytest.raises(CodecError):
        decode_tensor(Array(dtype="float32", shape=(30,), stype="who-knows", data=arr.data))


def test_pack_unpack_state_and_values_bytes():
    state = {"fc.weight": torch.randn(4, 6), "fc.bias": torch.randn(4)}
    mask = Mask({"fc.weight": torch.rand(4, 6) > 0.5})
    mask.apply_(state)
    record = pack_state(state, mask)
    back, got = unpack_state(record, state)
    assert got == mask and all(torch.equal(back[k], state[k]) for k in state)
    assert values_bytes(record, {"fc.weight"}) == 4 * mask.num_kept()
    assert record.count_bytes() > values_bytes(record, {"fc.weight"})
    with pytest.raises(CodecError, match="lacks"):
        unpack_state(record, {"fc.weight": state["fc.weight"]})
    with pytest.raises(CodecError, match="shape"):
        unpack_state(record, {"fc.weight": torch.zeros(6, 4), "fc.bias": torch.zeros(4)})


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    density=st.floats(0.0, 1.0),
    send_mask=st.booleans(),
    special=st.sampled_from([None, float("nan"), float("inf"), -float("inf"), -0.0]),
    seed=st.integers(0, 2**16),
)
def test_property_masked_codec_is_an_exact_roundtrip(shape, density, send_mask, special, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g)
    if special is not None:
        t.view(-1)[0] = special
    keep = torch.rand(*shape, generator=g) < density  # includes empty and full masks
    arr = encode_tensor(t, keep, send_mask)
    out, got = decode_tensor(arr, None if send_mask else keep)
    assert torch.equal(got, keep)
    expected = torch.where(keep, t, torch.zeros_like(t))
    # bitwise equality, so NaN payloads and the sign of zero must survive too
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))
