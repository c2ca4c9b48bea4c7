"""The server's per-client mask table: bit-packed (n/8 bytes per distinct mask), shared, exact."""
import pickle

import torch

from fedlottery.sparsity import Mask
from fedlottery.sparsity.mask_table import MaskTable

SHAPES = {"a": (300, 100), "b": (7, 3, 5)}


def _random(seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(s, generator=g) > 0.7 for n, s in SHAPES.items()})


def test_round_trip_and_cached_density():
    table = MaskTable()
    masks = {pid: _random(pid) for pid in range(5)}
    for pid, mask in masks.items():
        table[pid] = mask
    assert all(table[pid] == mask for pid, mask in masks.items())
    assert all(table.density(pid) == mask.density() for pid, mask in masks.items())


def test_clients_sharing_a_mask_store_it_once_at_n_over_8_bytes():
    n = sum(torch.Size(s).numel() for s in SHAPES.values())
    table = MaskTable()
    table.assign(range(10_000), Mask.ones(SHAPES))
    assert table.distinct() == 1 and table.packed_bytes() == sum((torch.Size(s).numel() + 7) // 8
                                                                 for s in SHAPES.values())
    assert table.packed_bytes() <= n / 8 + len(SHAPES)
    table[3] = _random(1)
    table[4] = _random(1)  # same content as client 3: stored once
    assert table.distinct() == 2
    table[3] = table[4] = Mask.ones(SHAPES)  # the unused mask is freed
    assert table.distinct() == 1 and len(table) == 10_000


def test_pickles_compactly():
    table = MaskTable()
    table.assign(range(1000), _random(2))
    data = pickle.dumps(table)
    assert pickle.loads(data)[999] == _random(2)
    assert len(data) < 30_000 + 1000 * 40  # one packed mask plus a small entry per client
