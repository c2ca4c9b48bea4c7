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


# ---- `late` in simulated time ---------------------------------------------------------------------------------
LATE_RECORD = "fedlottery-simulated"  # a reply's record marking it late; the server treats it as never arrived


def mark_late(reply) -> None:
    """faults.late: the reply is marked as arriving after the round's deadline, in simulated time. No wall-clock
    wait: a real sleep past simulation.round_timeout made the run's length, and on a loaded machine which other
    replies made it, depend on the machine (and cost the timeout every time)."""
    from flwr.app import ConfigRecord

    reply.content[LATE_RECORD] = ConfigRecord({"late": True})


def is_marked_late(reply) -> bool:
    """Whether a reply carries `mark_late`'s mark (the server drops it as a reply past the deadline)."""
    return not reply.has_error() and LATE_RECORD in reply.content


# ---- a slow client, for tests of timing independence -----------------------------------------------------------
SLOW_ENV = "FEDLOTTERY_SLOW_PARTITION"  # "PARTITION:SECONDS", e.g. "2:1.5": that client sleeps after training


def slow_down(partition_id: int) -> None:
    """Sleep when $FEDLOTTERY_SLOW_PARTITION names this partition: a test hook that makes one client actor slow
    (as a loaded machine does) to show the results do not depend on it. Unset in every normal run."""
    import os
    import time

    spec = os.environ.get(SLOW_ENV, "")
    if spec:
        pid, _, seconds = spec.partition(":")
        if int(pid) == partition_id:
            time.sleep(float(seconds or 1.0))
