"""State checkpoints: everything a killed federated run needs to go on, written atomically after a round.

What one holds (see server_app.run_experiment): the config it belongs to; where the run stands (strategy
index, last finished round); the strategy's whole server state (θ_g, every client's mask bit-packed, the
client-state versions, momentum, FLASH's masks, its RNGs); the round bookkeeping (byte meter, accuracies,
rows); the summary so far; the driver's RNG states; and the sizes of the result files, which a resume
truncates back to, so rows of a round that was in flight when the run died are written again, identically.
Client-side state is not in it: it lives in the run's client-state store (fedlottery.client_state), whose
versions named here the clients never delete.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(out_dir: Path, payload: dict[str, Any]) -> None:
    """Write, flush to disk, then rename over the previous checkpoint: a kill leaves one whole file."""
    path = Path(out_dir) / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: nothing to resume (run without --resume to start afresh)")
    return torch.load(path, weights_only=False)  # our own file, written by save_checkpoint


def file_sizes(out_dir: Path, names: tuple[str, ...]) -> dict[str, int]:
    return {name: (Path(out_dir) / name).stat().st_size if (Path(out_dir) / name).exists() else 0 for name in names}


def truncate_to(out_dir: Path, sizes: dict[str, int]) -> None:
    """Cut each result file back to its checkpointed size (rows written after the checkpoint go)."""
    for name, size in sizes.items():
        path = Path(out_dir) / name
        if path.exists() and path.stat().st_size > size:
            with path.open("r+b") as f:
                f.truncate(size)
