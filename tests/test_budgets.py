"""FLASH's mask maths: layer budgets rescaled to a target, top-|w| and random masks, prune-and-regrow."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlottery.sparsity import Mask, prune_and_regrow, random_mask_with_counts, rescale_counts, top_magnitude_mask

SIZES = {"a": 100, "b": 1000, "c": 10}


@settings(max_examples=60, deadline=None)
@given(
    densities=st.fixed_dictionaries({k: st.floats(0.0, 1.0) for k in SIZES}),
    target=st.floats(0.0, 1.0),
)
def test_property_rescaled_counts_hit_the_target_exactly_and_fit_each_layer(densities, target):
    counts = rescale_counts(densities, SIZES, target)
    assert sum(counts.values()) == round(target * sum(SIZES.values()))
    assert all(0 <= counts[n] <= SIZES[n] for n in SIZES)


def test_rescaling_keeps_proportions_and_caps_full_layers():
    counts = rescale_counts({"a": 0.2, "b": 0.1, "c": 0.1}, {"a": 1000, "b": 1000, "c": 1000}, 0.2)
    assert counts == {"a": 300, "b": 150, "c": 150}
    capped = rescale_counts({"a": 0.9, "b": 0.1, "c": 1.0}, SIZES, 0.2)
    assert capped["a"] == 100 and capped["c"] == 10 and capped["b"] == 222 - 110


def test_random_mask_has_exact_counts_and_top_magnitude_nests():
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (10, 10), "b": (1000,)}
    mask = random_mask_with_counts(shapes, {"a": 30, "b": 200}, g)
    assert mask.kept_per_layer() == {"a": 30, "b": 200}
    weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    inner = top_magnitude_mask(weights, {"a": 10, "b": 50}, within=mask)
    assert inner.kept_per_layer() == {"a": 10, "b": 50}
    assert all(bool((inner[n] <= mask[n]).all()) for n in shapes)
    kept_scores = weights["b"].abs()[inner["b"]]
    others = weights["b"].abs()[mask["b"] & ~inner["b"]]
    assert kept_scores.min() >= others.max()


def test_prune_and_regrow_keeps_the_count_and_regrows_only_at_previously_pruned_positions():
    g = torch.Generator().manual_seed(1)
    mask = random_mask_with_counts({"a": (50, 20), "b": (300,)}, {"a": 200, "b": 60}, g)
    weights = {n: torch.randn(mask[n].shape, generator=g) * mask[n] for n in mask}
    weights["a"] *= 10  # a layer with larger weights gets more of the regrowth
    new = prune_and_regrow(mask, weights, 0.25, g)
    assert new.num_kept() == mask.num_kept()
    grown = {n: new[n] & ~mask[n] for n in mask}
    dropped = {n: mask[n] & ~new[n] for n in mask}
    assert sum(int(d.sum()) for d in dropped.values()) == round(0.25 * 200) + round(0.25 * 60)
    assert int(grown["a"].sum()) > int(dropped["a"].sum())  # budget moved towards the larger-|w| layer
    for n in mask:  # dropped entries were the smallest kept ones
        assert weights[n].abs()[dropped[n]].max() <= weights[n].abs()[mask[n] & new[n]].min()
    assert prune_and_regrow(mask, weights, 0.0, g) == mask


def test_regrowth_spills_over_when_a_layer_is_full():
    g = torch.Generator().manual_seed(2)
    mask = Mask({"a": torch.ones(10, dtype=torch.bool), "b": torch.zeros(100, dtype=torch.bool)})
    mask["b"][:10] = True
    weights = {"a": torch.full((10,), 5.0), "b": torch.randn(100, generator=g) * mask["b"]}
    new = prune_and_regrow(mask, weights, 0.5, g)
    assert new.num_kept() == mask.num_kept() and math.isclose(new.density(), mask.density())
