"""Test a model that many clients share once per worker process, not once per client.

Every FedAvg client (and every client of any dense strategy without personal tensors) is tested on the same
theta_g. Where the clients' test sets overlap heavily -- `test: labels` gives each client every test image of
its labels, so on MNIST Table 2 each test image belongs to ~76 clients -- scoring the whole test set once and
reading each client's loss and accuracy off its own images is ~40x less work than testing every client on
its own images. A result is reused only for a model bit-identical to the one scored (its whole state_dict is
compared), so sharing can change cost, never a number beyond float64 summation order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedlottery.training import evaluate_per_example

# Share only when the clients' test sets together hold at least this many copies of the test set: below it,
# scoring the whole set for the first client of a process would cost more than it saves.
OVERLAP_TO_SHARE = 4.0


def worth_sharing(client_test_sizes: list[int], test_set_size: int) -> bool:
    """Whether the clients' test sets overlap enough for one pass over the test set to pay."""
    return test_set_size > 0 and sum(client_test_sizes) >= OVERLAP_TO_SHARE * test_set_size


@dataclass
class _Scored:
    """One model's per-image results on one experiment's test set."""

    key: str
    state: dict[str, torch.Tensor]
    losses: torch.Tensor
    hits: torch.Tensor


_last: _Scored | None = None  # per process: the last shared model scored (a round's evaluation reuses it)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def evaluate_shared(model: nn.Module, key: str, test: tuple[torch.Tensor, torch.Tensor], indices: torch.Tensor
                    ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on test[indices], scoring the whole test set at most once per
    distinct model. key names the experiment whose test set `test` is (a process may serve several)."""
    global _last
    state = model.state_dict()
    if _last is None or _last.key != key or not _same_state(state, _last.state):
        losses, hits = evaluate_per_example(model, test)
        _last = _Scored(key, {k: v.detach().clone() for k, v in state.items()}, losses, hits)
    n = int(indices.numel())
    if n == 0:
        return float("nan"), float("nan")
    idx = indices.to(_last.losses.device)
    return float(_last.losses[idx].sum()) / n, int(_last.hits[idx].sum()) / n


def forget() -> None:
    """Drop the cached scores (tests; a process that wants its memory back)."""
    global _last
    _last = None
