"""State checkpoints: everything a killed federated run needs to go on, written atomically after a round.

The format is plain data (fedlottery.plain_state): a dict of tensors, numbers, strings, lists and dicts with a
format name and version, read back with `torch.load(..., weights_only=True)`. Nothing in it names a Python
module or class, so moving code never breaks a saved run, and a crafted file cannot run code on `--resume`:
anything but plain data is refused unopened, with one line.

What one holds (see fedlottery.runtime.server_app): the config it belongs to; where the run stands (strategy
index, last finished round); the strategy's declared state (`FederatedStrategy.state_dict`: θ_g, every
client's mask bit-packed, the client-state versions, momentum, FLASH's masks, its RNGs); the round
bookkeeping (byte meter, accuracies, rows); the summary so far; and the sizes of the result files, which a
resume truncates back to, so rows of a round that was in flight when the run died are written again,
identically. Client-side state is not in it: it lives in the run's client-state store
(fedlottery.runs.client_state), whose versions named here the clients never delete.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from fedlottery.errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "fedlottery-checkpoint"
VERSION = 1
_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+)")  # torch's weights_only refusal names the object
_FRESH = "start afresh with --overwrite (or point --out at a new directory)"


def save_checkpoint(out_dir: Path, payload: dict[str, Any]) -> None:
    """Write, flush to disk, then rename over the previous checkpoint: a kill or a full disk leaves one whole file.
    `payload` must already be plain data (fedlottery.plain_state.to_plain)."""
    path = Path(out_dir) / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:  # disk full, a kill: the previous checkpoint stays whole, no half file beside it
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    """The checkpoint's payload, or a CheckpointError in one line saying what is wrong with the file."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: nothing to resume (run without --resume to start afresh)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), so it cannot be resumed from; {_FRESH}")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        text = " ".join(str(err).split())
        found = _GLOBAL.search(text)
        if found is None:  # not a pickle of objects: bytes that are no pickle at all
            raise CheckpointError(f"{path} is truncated or corrupt (not a readable checkpoint); {_FRESH}") from None
        raise CheckpointError(f"{path} holds pickled Python objects ({found.group(1)}), which fedlottery checkpoints "
                              f"never do; it was refused without running them; {_FRESH}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); {_FRESH}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedlottery checkpoint (written by an older fedlottery, or another "
                              f"tool); {_FRESH}")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint format version {payload.get('version')!r}; this fedlottery "
                              f"reads version {VERSION}; resume with the fedlottery that wrote it, or {_FRESH}")
    return payload


def file_sizes(out_dir: Path, names: tuple[str, ...]) -> dict[str, int]:
    return {name: (Path(out_dir) / name).stat().st_size if (Path(out_dir) / name).exists() else 0 for name in names}


def truncate_to(out_dir: Path, sizes: dict[str, int]) -> None:
    """Cut each result file back to its checkpointed size (rows written after the checkpoint go)."""
    for name, size in sizes.items():
        path = Path(out_dir) / name
        if path.exists() and path.stat().st_size > size:
            with path.open("r+b") as f:
                f.truncate(size)
