"""The on-disk cache shared by the CIFAR-10 JPEG decoder and the partition cache.

Both keep numpy arrays in .npz files under one directory, written atomically, so that several runs on one
machine can share (and race on) them safely.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

ENV_CACHE = "FEDLOTTERY_CACHE"


def cache_dir() -> pathlib.Path:
    """Where decoded arrays live between processes: $FEDLOTTERY_CACHE, else ~/.cache/fedlottery."""
    env = os.environ.get(ENV_CACHE, "")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "fedlottery"


def write_npz_atomic(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write via a temp file + rename so parallel runs never see a half-written cache; failure is not fatal."""
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        logger.warning("could not write cache %s (%s); continuing without it", path, exc)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
