"""Model payloads: exact round trips, mask news only (nothing when unchanged, a delta when pruned), metering."""
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedlottery.comm import CodecError, broadcast_bytes, content_bytes, pack_state, unpack_state, values_bytes
from fedlottery.comm.codec import codec_of
from fedlottery.sparsity import Mask, magnitude_prune


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(40, 60, generator=g), "fc.bias": torch.randn(40, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


def _mask(state, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Mask({"fc.weight": torch.rand(state["fc.weight"].shape, generator=g) < density})


def test_roundtrip_with_and_without_the_receivers_mask():
    state = _state()
    mask = _mask(state)
    mask.apply_(state)
    record = pack_state(state, mask)
    back, got = unpack_state(record, state, prunable={"fc.weight"})
    assert got == mask and all(torch.equal(back[k], state[k]) for k in state)
    assert back["bn.num_batches_tracked"].dtype == torch.int64
    known = pack_state(state, mask, reference=mask)
    assert codec_of(known["fc.weight"])[0] == "known"  # unchanged mask: values only
    assert known.count_bytes() < record.count_bytes()
    assert values_bytes(known, {"fc.weight"}) == values_bytes(record, {"fc.weight"}) == 4 * mask.num_kept()
    back, got = unpack_state(known, state, reference=mask, prunable={"fc.weight"})
    assert got == mask and torch.equal(back["fc.weight"], state["fc.weight"])
    with pytest.raises(CodecError):
        unpack_state(known, state, prunable={"fc.weight"})  # the receiver lacks the mask


def test_pruning_sends_a_mask_delta_smaller_than_the_mask():
    state = _state()
    old = _mask(state, 0.5)
    new = magnitude_prune(old, state, 0.2)
    new.apply_(state)
    delta = pack_state(state, new, reference=old)
    full = pack_state(state, new)
    assert codec_of(delta["fc.weight"])[0] == "delta"
    assert delta.count_bytes() < full.count_bytes()
    back, got = unpack_state(delta, state, reference=old, prunable={"fc.weight"})
    assert got == new and torch.equal(back["fc.weight"], state["fc.weight"])


def test_dense_tensors_and_skipped_names():
    state = _state()
    record = pack_state(state, skip=frozenset({"fc.bias"}))
    assert "fc.bias" not in record
    back, got = unpack_state(record, state, prunable={"fc.weight"})
    assert got.density() == 1.0 and torch.equal(back["fc.weight"], state["fc.weight"])


def test_lossy_values_are_opt_in_and_labelled():
    state = _state()
    mask = _mask(state)
    mask.apply_(state)
    half = pack_state(state, mask, values="float16")
    assert codec_of(half["fc.weight"])[1] == "float16"
    back, _ = unpack_state(half, state, prunable={"fc.weight"})
    assert torch.allclose(back["fc.weight"], state["fc.weight"], atol=1e-2)
    assert values_bytes(half, {"fc.weight"}) == 2 * mask.num_kept()


def test_unexpected_payloads_raise():
    state = _state()
    record = pack_state(state)
    with pytest.raises(CodecError, match="lacks"):
        unpack_state(record, {"fc.weight": state["fc.weight"]})
    with pytest.raises(CodecError, match="shape"):
        unpack_state(record, {**state, "fc.weight": torch.zeros(60, 40)})


def test_broadcast_counts_identical_models_once(flower_run):
    state = _state()
    model = pack_state(state)
    messages = [
        Message(RecordDict({"model": model, "config": ConfigRecord({"partition-id": p})}), 100 + p, "train")
        for p in range(3)
    ]
    config_bytes = sum(content_bytes(m.content) - model.count_bytes() - len("model") for m in messages)
    assert broadcast_bytes(messages) == config_bytes + model.count_bytes() + len("model")
    other = Message(RecordDict({"model": pack_state(_state(1)), "config": ConfigRecord({"partition-id": 9})}),
                    109, "train")
    assert broadcast_bytes(messages + [other]) == broadcast_bytes(messages) + content_bytes(other.content)
    assert isinstance(model, ArrayRecord)
