"""Paired randomness: who trains in each round, and what each client draws, fixed by the seed and never by a
strategy's name.

A comparison of two methods means something only if both saw the same clients in the same rounds and each client
drew the same batches: then a difference in accuracy is the methods', not the luck of the draw. So every stream
here is a pure function of (seed, round, who, purpose):

- `scheduled_clients`: the clients of round r, the same for every strategy of a run (and for a resumed run);
- `client_seed`: a client's stream for one purpose in one round ("train": its training generator, "finetune":
  the evaluation's fine-tuning copy, "fault/<kind>": an injected fault), the same under any strategy name, so a
  plug-in identical to FedAvg under another name gets bit-identical numbers;
- `draw_ids` / `stream_seed`: a strategy's own draws (FLASH's extra hunters, the evaluation sample) from streams
  named by their purpose, so they never shift the shared schedule.

Nothing here imports fedlottery.runtime or fedlottery.runs: the strategies' server halves use it too.
"""
from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np


def stream_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed fixed by the run's seed and `parts` (e.g. round, partition, purpose), "/"-joined."""
    return zlib.crc32("/".join(str(p) for p in (seed, *parts)).encode())


def draw_ids(seed: int, server_round: int, purpose: str, population: Iterable[int], k: int) -> list[int]:
    """k distinct ids of `population`, sorted, drawn from the stream (seed, round, purpose); the order the
    population is given in does not matter."""
    ids = sorted(int(p) for p in population)
    if not 0 <= k <= len(ids):
        raise ValueError(f"cannot draw {k} of {len(ids)} clients ({purpose}, round {server_round})")
    generator = np.random.default_rng(stream_seed(seed, server_round, purpose))
    return sorted(int(p) for p in generator.choice(ids, size=k, replace=False))


def scheduled_clients(seed: int, server_round: int, population: Iterable[int], clients_per_round: int) -> list[int]:
    """The partition ids that train in round `server_round`: the same for every strategy of a run."""
    return draw_ids(seed, server_round, "schedule", population, clients_per_round)


def client_seed(seed: int, server_round: int, partition_id: int, purpose: str = "train") -> int:
    """Client `partition_id`'s seed for `purpose` in this round; a strategy needing a client stream of its own
    draws it from the training generator seeded with this, not from its name."""
    return stream_seed(seed, server_round, partition_id, purpose)
