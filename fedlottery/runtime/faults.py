"""Seeded fault injection (the config's `faults:` section): which client misbehaves, in which round, how.

Every draw is a pure function of (seed, round, partition, fault kind), so the client that injects a fault and
the benchmark that counts the injected ones agree exactly, a rerun injects the same faults, and every strategy
of a run faces the same faulty clients (no strategy name enters the draw: comparisons stay paired).
"""
from __future__ import annotations

from fedlottery.schedule import client_seed

TRAIN_FAULTS = ("train_crash", "late", "corrupt", "nan", "lie_examples")
EVAL_FAULTS = ("eval_crash",)


class InjectedFault(RuntimeError):
    """A failure the config asked for (faults.train_crash / faults.eval_crash)."""


def draw(seed: int, server_round: int, partition_id: int, kind: str) -> float:
    """A uniform number in [0, 1) fixed by its arguments."""
    return client_seed(seed, server_round, partition_id, f"fault/{kind}") / 2**32


def injected(faults, seed: int, server_round: int, partition_id: int, kind: str) -> bool:
    """Whether client `partition_id` suffers fault `kind` in this round (faults: a FaultsConfig)."""
    probability = getattr(faults, kind)
    return probability > 0 and draw(seed, server_round, partition_id, kind) < probability


def faults_of(faults, seed: int, server_round: int, partition_id: int, kinds: tuple[str, ...]) -> list[str]:
    """Every fault of `kinds` this client suffers this round."""
    return [k for k in kinds if injected(faults, seed, server_round, partition_id, k)]
