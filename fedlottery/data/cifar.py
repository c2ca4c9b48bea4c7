"""CIFAR-10 from the python batches or, failing those, from a JPEG zip decoded once into an .npz cache."""

from __future__ import annotations

import codecs
import io
import logging
import pathlib
import pickle
import zipfile
import zlib
from pathlib import PurePosixPath

import numpy as np
import torch

from fedlottery.data.cache import cache_dir, write_npz_atomic
from fedlottery.data.record import CORRUPT_FIX, FIX_HINT, Dataset, PixelScale
from fedlottery.errors import DataCorruptError, DataNotFoundError

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_ZIP = "cifar10-jpeg.zip"
_CIFAR_BATCH_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_CACHE_VERSION = 1


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and bytes): CIFAR batches need nothing else, and a
    plain `pickle.load` would run arbitrary code from a tampered file."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        core = np._core if hasattr(np, "_core") else np.core  # numpy 2 vs 1
        safe = {
            ("multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("multiarray", "scalar"): core.multiarray.scalar,
            ("numeric", "_frombuffer"): getattr(core.numeric, "_frombuffer", None),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                      "numpy.core.numeric", "numpy._core.numeric"):
            found = safe.get((module.rsplit(".", 1)[-1], name))
            if found is not None:
                return found
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles from Python 3 store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-format batch -> (uint8 N x 3 x 32 x 32, int64 N)."""
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: {exc}; {CORRUPT_FIX}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: expected a dict with b'data' and b'labels'; "
                               f"{CORRUPT_FIX}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, expected uint8 "
                               f"(N, 3072); {CORRUPT_FIX}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= 10)):
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: labels do not match the data; {CORRUPT_FIX}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_batches(batch_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """All six python batches; every one must exist."""
    names = [*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH]
    missing = [str(batch_dir / n) for n in names if not (batch_dir / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"data set 'cifar10': {batch_dir} is incomplete; looked for: {', '.join(missing)}; fix: {FIX_HINT}"
        )
    train = [_read_cifar_batch(batch_dir / n) for n in _CIFAR_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(batch_dir / _CIFAR_TEST_BATCH)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _decode_cifar_zip(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Decode ``<any prefix>/{train,test}/<class>/NNNN.jpg`` members, ordered by class then file name."""
    from PIL import Image

    label_of = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members: dict[str, list[tuple[int, str, zipfile.ZipInfo]]] = {"train": [], "test": []}
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if info.is_dir() or len(parts) < 3 or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                    continue
                split, cls, fname = parts[-3:]
                if split in members and cls in label_of and fname.lower().endswith((".jpg", ".jpeg")):
                    members[split].append((label_of[cls], fname, info))
            for split, items in members.items():
                if not items:
                    raise DataCorruptError(
                        f"{path}: no {split} images found; expected members like cifar10-jpeg/{split}/<class>/0000.jpg"
                    )
                items.sort(key=lambda item: (item[0], item[1]))
                images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
                for i, (_, _, info) in enumerate(items):
                    with Image.open(io.BytesIO(zf.read(info))) as img:
                        if img.size != (32, 32):
                            raise DataCorruptError(
                                f"{path}: {info.filename} is {img.size[0]}x{img.size[1]}, expected 32x32")
                        images[i] = np.asarray(img.convert("RGB"))
                out[f"x_{split}"] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
                out[f"y_{split}"] = np.fromiter((item[0] for item in items), dtype=np.int64, count=len(items))
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataCorruptError(f"corrupt CIFAR-10 zip {path}: {exc}; {CORRUPT_FIX}") from exc
    return out


def _valid_cifar_arrays(arrays: dict[str, np.ndarray]) -> bool:
    """Cheap structural check of cached arrays, so a damaged cache is rebuilt rather than trusted."""
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None or y is None:
            return False
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or x.shape[0] == 0:
            return False
        if y.dtype != np.int64 or y.shape != (x.shape[0],) or y.min() < 0 or y.max() >= 10:
            return False
    return True


def _load_cifar_zip_cached(zip_path: pathlib.Path) -> dict[str, np.ndarray]:
    """Decoding 60k JPEGs takes seconds; keep the uint8 arrays in an .npz keyed by the zip's size+mtime."""
    st = zip_path.stat()
    key = np.array([_CIFAR_CACHE_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)
    cache_file = cache_dir() / f"{zip_path.stem}-v{_CIFAR_CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if np.array_equal(arrays.pop("key", None), key) and _valid_cifar_arrays(arrays):
                return arrays
            logger.warning("CIFAR-10 cache %s does not match %s; rebuilding it", cache_file, zip_path)
        except Exception as exc:  # any damage to the cache file just means "decode again"
            logger.warning("CIFAR-10 cache %s is unreadable (%s); rebuilding it", cache_file, exc)
    arrays = _decode_cifar_zip(zip_path)
    write_npz_atomic(cache_file, {**arrays, "key": key})
    return arrays


def load_cifar10(root: pathlib.Path) -> Dataset:
    """CIFAR-10 from the exact python batches if present, else from the JPEG zip (decoded once, cached)."""
    batch_dir = root / _CIFAR_BATCH_DIR
    zip_path = root / _CIFAR_ZIP
    if batch_dir.is_dir():
        arrays = _read_cifar_batches(batch_dir)
    elif zip_path.is_file():
        arrays = _load_cifar_zip_cached(zip_path)
    else:
        raise DataNotFoundError(
            f"data set 'cifar10': files missing under data root {root}; looked for: {batch_dir}/ "
            f"(data_batch_1..5, test_batch) and {zip_path}; fix: {FIX_HINT}"
        )
    mean = torch.tensor(_CIFAR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD, dtype=torch.float32).view(1, 3, 1, 1)
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        tensors[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}"]))  # uint8 pixels
        tensors[f"y_{split}"] = torch.from_numpy(np.asarray(arrays[f"y_{split}"], dtype=np.int64).copy())
    return Dataset(name="cifar10", num_classes=10, pixels=PixelScale(mean, std), **tensors)
