"""Masks and pruning rules: exact counts, the output-layer rate, global vs layer-wise, clamping, controls."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlottery.sparsity import (
    Mask,
    compound_rates,
    layer_rates,
    magnitude_prune,
    random_mask_like,
    random_prune,
    structured_prune,
)


def _weights(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


SHAPES = {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "out.weight": (10, 100)}


def test_mask_statistics_and_hamming():
    mask = Mask.ones({"a": (2, 5), "b": (10,)})
    assert mask.numel() == 20 and mask.num_kept() == 20 and mask.density() == 1.0
    other = mask.copy()
    other["a"][0, :] = False
    assert other.kept_per_layer() == {"a": 5, "b": 10}
    assert other.layer_densities() == {"a": 0.5, "b": 1.0}
    assert mask.hamming(other) == pytest.approx(5 / 20)
    assert mask != other and mask == mask.copy()


def test_layerwise_counts_exact_with_output_rate():
    w = _weights(SHAPES)
    rates = layer_rates(SHAPES, 0.2, output_name="out.weight", output_rate=0.1)
    mask = Mask.ones(SHAPES)
    kept = {n: math.prod(s) for n, s in SHAPES.items()}
    for _ in range(3):
        mask = magnitude_prune(mask, w, rates)
        kept = {n: k - int(math.floor(rates[n] * k + 0.5)) for n, k in kept.items()}
        assert mask.kept_per_layer() == kept
    # Frankle & Carbin's LeNet-300-100: 51.3% remaining after 3 levels.
    assert round(100 * mask.density(), 1) == 51.3


def test_magnitude_prune_removes_smallest_kept_only():
    w = {"a": torch.tensor([5.0, -1.0, 0.5, 3.0, -0.1, 2.0])}
    mask = magnitude_prune(Mask.ones({"a": (6,)}), w, 0.5)
    assert mask["a"].tolist() == [True, False, False, True, False, True]
    # Next step prunes among survivors only, even though pruned entries have small magnitude.
    mask = magnitude_prune(mask, w, 0.34)
    assert mask["a"].tolist() == [True, False, False, True, False, False]


def test_global_scope_uses_one_threshold():
    w = {"big": torch.full((10,), 10.0) + torch.arange(10.0), "small": torch.arange(10.0) * 0.01}
    mask = magnitude_prune(Mask.ones({"big": (10,), "small": (10,)}), w, 0.5, scope="global")
    assert mask.kept_per_layer() == {"big": 10, "small": 0}
    layer = magnitude_prune(Mask.ones({"big": (10,), "small": (10,)}), w, 0.5, scope="layer")
    assert layer.kept_per_layer() == {"big": 5, "small": 5}


def test_global_scope_rejects_per_layer_rates():
    with pytest.raises(ValueError):
        magnitude_prune(Mask.ones({"a": (4,)}), {"a": torch.ones(4)}, {"a": 0.5}, scope="global")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_target_density_clamps_last_step_exactly(scope):
    shapes = {"conv.weight": (10, 1, 5, 5), "fc.weight": (50, 320), "out.weight": (10, 50)}
    w = _weights(shapes)
    mask = Mask.ones(shapes)
    target = 0.1
    densities = []
    for _ in range(20):
        mask = magnitude_prune(mask, w, 0.2, scope=scope, target_density=target)
        densities.append(mask.density())
    assert mask.num_kept() == math.ceil(target * mask.numel())
    assert min(densities) >= target
    # Once there, no further pruning.
    assert magnitude_prune(mask, w, 0.2, scope=scope, target_density=target) == mask


def test_overshoot_goes_below_target():
    shapes = {"a": (1000,)}
    w = _weights(shapes)
    mask = Mask.ones(shapes)
    while mask.density() > 0.1:
        mask = magnitude_prune(mask, w, 0.2, target_density=0.1, overshoot=True)
    assert mask.density() < 0.1  # 0.8**11 = 0.0859, the LotteryFL authors' overshoot
    assert mask.num_kept() == 86


def test_layer_rates_conv_output_and_overrides():
    rates = layer_rates(
        ["c.weight", "f.weight", "o.weight"], 0.2, output_name="o.weight", output_rate=0.1,
        conv_names=["c.weight"], conv_rate=0.15, overrides={"f.weight": 0.3},
    )
    assert rates == {"c.weight": 0.15, "f.weight": 0.3, "o.weight": 0.1}
    with pytest.raises(KeyError):
        layer_rates(["a"], 0.2, overrides={"nope": 0.1})
    assert compound_rates({"a": 0.2}, 3)["a"] == pytest.approx(1 - 0.8**3)


def test_random_mask_matches_layer_densities():
    w = _weights(SHAPES)
    mask = magnitude_prune(Mask.ones(SHAPES), w, {"fc1.weight": 0.7, "fc2.weight": 0.4, "out.weight": 0.1})
    rnd = random_mask_like(mask, torch.Generator().manual_seed(1))
    assert rnd.kept_per_layer() == mask.kept_per_layer()
    assert rnd != mask
    again = random_mask_like(mask, torch.Generator().manual_seed(1))
    assert again == rnd


def test_random_prune_counts_like_magnitude():
    mask = Mask.ones(SHAPES)
    a = random_prune(mask, 0.2, torch.Generator().manual_seed(0))
    b = magnitude_prune(mask, _weights(SHAPES), 0.2)
    assert a.kept_per_layer() == b.kept_per_layer()


def test_structured_prune_removes_whole_filters_by_l1():
    w = {"conv.weight": torch.arange(1, 5, dtype=torch.float).reshape(4, 1, 1, 1).repeat(1, 2, 3, 3),
         "out.weight": torch.ones(3, 4)}
    mask = structured_prune(Mask.ones({n: t.shape for n, t in w.items()}), w, 0.5, exclude=["out.weight"])
    alive = mask["conv.weight"].reshape(4, -1).all(1).tolist()
    dead = (~mask["conv.weight"].reshape(4, -1)).all(1).tolist()
    assert alive == [False, False, True, True] and dead == [True, True, False, False]
    assert mask["out.weight"].all()


def test_save_load_and_packed_roundtrip(tmp_path):
    w = _weights(SHAPES)
    mask = magnitude_prune(Mask.ones(SHAPES), w, 0.37)
    path = tmp_path / "m.npz"
    mask.save(path)
    assert Mask.load(path) == mask
    packed = mask.to_packed()
    assert len(packed["out.weight"][1]) == math.ceil(1000 / 8)
    assert Mask.from_packed(packed) == mask
    with pytest.raises(ValueError):
        Mask.from_packed({"a": ((9,), packed["out.weight"][1][:1])})


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    rate=st.floats(0.01, 0.99),
    target=st.one_of(st.none(), st.floats(0.01, 0.99)),
    seed=st.integers(0, 1000),
)
def test_property_prune_only_removes_and_respects_target(n, rate, target, seed):
    shapes = {"a": (n,), "b": (max(1, n // 3), 3)}
    w = _weights(shapes, seed)
    mask = random_prune(Mask.ones(shapes), 0.3, torch.Generator().manual_seed(seed))
    pruned = magnitude_prune(mask, w, rate, target_density=target)
    for name in shapes:  # never revives an entry
        assert not (pruned[name] & ~mask[name]).any()
    if target is not None:
        assert pruned.num_kept() >= min(mask.num_kept(), math.ceil(target * mask.numel() - 1e-9))
    else:
        expected = sum(k - int(math.floor(rate * k + 0.5)) for k in mask.kept_per_layer().values())
        assert pruned.num_kept() == expected
