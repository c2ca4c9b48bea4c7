"""Server aggregation rules, on hand-computed cases."""
import pytest
import torch

from fedlottery.aggregation import ClientWeights, masked_mean, mean
from fedlottery.sparsity import Mask


def _mask(values):
    return Mask({"w": torch.tensor(values, dtype=torch.bool)})


PREVIOUS = {"w": torch.tensor([10.0, 20.0, 30.0, 40.0]), "b": torch.tensor([1.0])}


def test_masked_mean_over_holders_only_and_nobody_kept_keeps_previous():
    a = ClientWeights({"w": torch.tensor([1.0, 2.0, 0.0, 0.0]), "b": torch.tensor([3.0])}, _mask([1, 1, 0, 0]))
    b = ClientWeights({"w": torch.tensor([3.0, 0.0, 6.0, 0.0]), "b": torch.tensor([5.0])}, _mask([1, 0, 1, 0]))
    out = masked_mean(PREVIOUS, [a, b], ["w"])
    # entry 0: both hold -> (1+3)/2; entry 1: only a -> 2; entry 2: only b -> 6; entry 3: nobody -> previous 40
    assert out["w"].tolist() == [2.0, 2.0, 6.0, 40.0]
    assert out["b"].tolist() == [4.0]  # non-prunable: plain mean over all participants


def test_masked_mean_sample_weighted():
    a = ClientWeights({"w": torch.tensor([1.0, 2.0, 0.0, 0.0]), "b": torch.tensor([0.0])}, _mask([1, 1, 0, 0]), 3.0)
    b = ClientWeights({"w": torch.tensor([5.0, 0.0, 6.0, 0.0]), "b": torch.tensor([4.0])}, _mask([1, 0, 1, 0]), 1.0)
    out = masked_mean(PREVIOUS, [a, b], ["w"])
    assert out["w"].tolist() == [pytest.approx((3 * 1 + 5) / 4), 2.0, 6.0, 40.0]
    assert out["b"].tolist() == [1.0]  # (3*0 + 1*4) / 4


def test_dense_upload_counts_as_holding_everything():
    a = ClientWeights({"w": torch.tensor([2.0, 2.0, 2.0, 2.0]), "b": torch.tensor([0.0])}, None)
    b = ClientWeights({"w": torch.tensor([4.0, 0.0, 0.0, 0.0]), "b": torch.tensor([0.0])}, _mask([1, 0, 0, 0]))
    assert masked_mean(PREVIOUS, [a, b], ["w"])["w"].tolist() == [3.0, 2.0, 2.0, 2.0]


def test_fedavg_mean_counts_pruned_as_zero_and_weights():
    a = ClientWeights({"w": torch.tensor([2.0, 0.0, 0.0, 0.0]), "b": torch.tensor([1.0])}, _mask([1, 0, 0, 0]), 1.0)
    b = ClientWeights({"w": torch.tensor([4.0, 4.0, 4.0, 4.0]), "b": torch.tensor([3.0])}, None, 3.0)
    out = mean(PREVIOUS, [a, b])
    assert out["w"].tolist() == [3.5, 3.0, 3.0, 3.0] and out["b"].tolist() == [2.5]


def test_no_uploads_leaves_state_unchanged():
    assert masked_mean(PREVIOUS, [], ["w"]) == PREVIOUS
