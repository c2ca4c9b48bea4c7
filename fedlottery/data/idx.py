"""MNIST and Fashion-MNIST from their idx files (gzipped or plain) under the data root."""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np
import torch

from fedlottery.data.record import CORRUPT_FIX, FIX_HINT, Dataset, PixelScale
from fedlottery.errors import DataCorruptError, DataNotFoundError

# (folder under the root, normalisation mean, std) for the two idx-format sets.
IDX_SETS: dict[str, tuple[str, float, float]] = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _read_idx(path: pathlib.Path, expected_magic: int) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into a uint8 array, checking header and size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataCorruptError(f"corrupt idx file {path}: cannot decompress ({exc}); {CORRUPT_FIX}") from exc
    except OSError as exc:
        raise DataCorruptError(f"cannot read idx file {path} ({exc.strerror or exc}); {CORRUPT_FIX}") from exc
    if len(raw) < 8:
        raise DataCorruptError(
            f"corrupt idx file {path}: only {len(raw)} bytes, too short for a header; {CORRUPT_FIX}")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise DataCorruptError(
            f"corrupt idx file {path}: magic number {magic}, expected {expected_magic}; {CORRUPT_FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataCorruptError(f"corrupt idx file {path}: truncated header; {CORRUPT_FIX}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataCorruptError(
            f"corrupt idx file {path}: header says {dims} ({expected} bytes) but the file has {len(raw)} bytes; "
            f"{CORRUPT_FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_files(name: str, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Locate the four idx files (gz preferred, plain accepted) or say every path that was tried."""
    folder, _, _ = IDX_SETS[name]
    raw_dir = root / folder / "raw"
    found: dict[str, pathlib.Path] = {}
    looked: list[str] = []
    for key, stem in _IDX_FILES.items():
        options = [raw_dir / f"{stem}.gz", raw_dir / stem]
        hit = next((p for p in options if p.is_file()), None)
        if hit is None:
            looked.extend(str(p) for p in options)
        else:
            found[key] = hit
    if looked:
        raise DataNotFoundError(
            f"data set {name!r}: files missing under data root {root}; looked for: {', '.join(looked)}; "
            f"fix: {FIX_HINT} (layout: <root>/{folder}/raw/<name>-ubyte.gz)"
        )
    return found


def load_idx_set(name: str, root: pathlib.Path) -> Dataset:
    """MNIST-style set: parse, validate; kept as uint8 pixels, scaled to [0, 1] and standardised with the usual
    constants when read (Dataset.inputs)."""
    _, mean, std = IDX_SETS[name]
    paths = _find_idx_files(name, root)
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"x_{split}"], _IDX_IMAGES_MAGIC)
        labels = _read_idx(paths[f"y_{split}"], _IDX_LABELS_MAGIC)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataCorruptError(f"{name}: unexpected idx shapes {images.shape} / {labels.shape} in "
                                   f"{paths[f'x_{split}']}; {CORRUPT_FIX}")
        if images.shape[0] != labels.shape[0]:
            raise DataCorruptError(
                f"corrupt {name} {split} files: {images.shape[0]} images but {labels.shape[0]} labels "
                f"({paths[f'x_{split}']}, {paths[f'y_{split}']}); {CORRUPT_FIX}"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataCorruptError(f"corrupt idx file {paths[f'y_{split}']}: label {int(labels.max())} >= 10; "
                                   f"{CORRUPT_FIX}")
        tensors[f"x_{split}"] = torch.from_numpy(images.copy()).unsqueeze(1)  # uint8: normalised when read
        tensors[f"y_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return Dataset(name=name, num_classes=10, pixels=PixelScale(mean, std), **tensors)
