"""Shared by the FedDST, FedSpa and DisPFL tests: a small federation config and what an honest sparse payload
costs, computed with the codec itself (kept values at 4 bytes each plus the coded mask change, dense others)."""
import torch

from fedlottery.comm import encode_tensor
from fedlottery.comm.codec import values_bytes_of
from federation_helpers import small_config


def dst_config(name: str, **options):
    return small_config([name], rounds=4, clients_per_round=3, model={"name": "cnn_digits"},
                        partition={"num_clients": 6, "shard_size": 30}, local={"lr": 0.05, "epochs": 1},
                        strategy_options={name: {"t_end": 4, **options}})


def expected_bytes(state, mask, reference, skip=frozenset()) -> int:
    """What the codec makes of `state` under `mask` against the receiver's `reference` (None: it holds none)."""
    total = 0
    for name, tensor in state.items():
        if name in skip:
            continue
        if name in mask:
            ref = None if reference is None else reference[name]
            total += len(encode_tensor(torch.zeros_like(tensor), mask[name], ref, "auto").data)
        else:
            total += len(encode_tensor(tensor).data)
    return total


def record_bytes(record, prunable) -> tuple[int, int]:
    """(all encoded bytes, value bytes of the prunable tensors) of an ArrayRecord."""
    return (sum(len(a.data) for a in record.values()),
            sum(values_bytes_of(a) for n, a in record.items() if n in set(prunable)))
