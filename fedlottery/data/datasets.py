"""Offline loaders for the image data sets the simulator trains on.

Nothing here downloads: build and benchmark machines reach package registries only, so every
loader reads files from a local data root (see `resolve_data_root`), for ``digits`` from the
copy that ships inside scikit-learn, and for ``hf`` from a Hugging Face data set that
``DatasetDict.save_to_disk`` wrote (``datasets.load_from_disk``, offline).  All loaders return the same
`Dataset` record: float32 images in NCHW layout, already normalised, and int64 labels.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import logging
import os
import pathlib
import pickle
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import torch

from fedlottery.errors import ConfigError, DataCorruptError, DataNotFoundError

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "Dataset",
    "check_data_config",
    "load_dataset",
    "resolve_data_root",
    "train_val_split",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "hf")
HF_SPLITS: tuple[str, str] = ("train", "test")  # the DatasetDict splits an `hf` data set must have
_HF_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

ENV_DATA = "FEDLOTTERY_DATA"
ENV_CACHE = "FEDLOTTERY_CACHE"

_FIX_HINT = "pass data.root in the config, set FEDLOTTERY_DATA, or put the files at ../shared/data"
_CORRUPT_FIX = "fix: replace it with an intact copy (or point data.root / $FEDLOTTERY_DATA at one)"
_HF_FIX = "fix: save it again with DatasetDict.save_to_disk as docs/getting-started.md's Data section describes"

# Repository root = parent of the `fedlottery` package directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

# (folder under the root, normalisation mean, std) for the two idx-format sets.
_IDX_SETS: dict[str, tuple[str, float, float]] = {
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


# --------------------------------------------------------------------------------------------
# Public record and error
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of normalised images and labels, shared read-only between callers.

    Instances may be cached and handed to several callers, so the tensors must be treated as
    immutable: clone before modifying them in place.  Equality is identity (comparing tensors
    element-wise would be ambiguous), and the repr shows shapes instead of data.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int

    def __post_init__(self) -> None:
        """Reject malformed data early, where the bug is, rather than deep inside training."""
        for split in ("train", "test"):
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"{self.name}: x_{split} and y_{split} must be torch tensors")
            if x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(f"{self.name}: x_{split} must be float32 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.name}: y_{split} must be int64 (N,) matching x_{split}, got {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: y_{split} has labels outside 0..{self.num_classes - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what a model needs to size its first layer."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


# DataNotFoundError (missing root or files) and DataCorruptError (unreadable files) are defined in
# fedlottery.errors, as subclasses of UserError (the command line reports them in one line, exit code 2).


def check_data_config(cfg, path: str = "data") -> None:
    """Check a config's `data` section against the loaders (fedlottery.config cannot import this package).

    For ``hf`` this opens the saved data set (memory-mapped, no image is decoded) and checks its splits and
    columns, so a wrong path or column name fails before anything starts."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"{path}.dataset: unknown data set {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if cfg.dataset == "hf":
        _hf_open(*_hf_settings(cfg, path), key=path)


# --------------------------------------------------------------------------------------------
# Data root
# --------------------------------------------------------------------------------------------


def _default_candidates() -> list[pathlib.Path]:
    """The fallback roots, in order: ../shared/data from the working dir, then from the repository."""
    return [pathlib.Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
    """Find the directory holding the data files; explicit settings win and must be valid.

    Order: `root`, then $FEDLOTTERY_DATA, then the first existing of ``./../shared/data`` (relative
    to the working directory) and ``<repository>/../shared/data``.  An explicit `root` or a set
    environment variable that does not exist raises `DataNotFoundError` (silently falling back would
    train on other data than asked for).  Returns None when no fallback exists.
    """
    if root is not None and str(root) != "":
        path = pathlib.Path(root).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(
                f"data root {path} (given explicitly) does not exist or is not a directory; "
                f"fix: {_FIX_HINT}"
            )
        return path.resolve()
    env = os.environ.get(ENV_DATA, "")
    if env:
        path = pathlib.Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(
                f"data root {path} (from ${ENV_DATA}) does not exist or is not a directory; fix: {_FIX_HINT}"
            )
        return path.resolve()
    for candidate in _default_candidates():
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _require_root(name: str, root: str | os.PathLike[str] | None) -> pathlib.Path:
    """Resolve the root for a file-based set, turning "nothing found" into a helpful error."""
    try:
        resolved = resolve_data_root(root)
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"data set {name!r}: {exc}") from None
    if resolved is None:
        looked = [f"${ENV_DATA} (not set)"] + [str(p) for p in _default_candidates()]
        raise DataNotFoundError(
            f"data set {name!r}: no data root found; looked at: {', '.join(looked)}; fix: {_FIX_HINT}"
        )
    return resolved


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_dataset(name, root: str | os.PathLike[str] | None = None) -> Dataset:
    """Load data set `name` (one of `DATASETS`), normalised and ready for training.

    `name` is a data set's name or a config's whole `data` section (`DataConfig`, then `root` is taken from
    it); ``hf`` needs the section (its `path` and columns): ``load_dataset(cfg.data)``.
    ``digits`` ships with scikit-learn and ignores `root`.  ``mnist``, ``fashion_mnist`` and ``cifar10``
    read files under the root found by `resolve_data_root`.  Results are cached in-process per (name,
    resolved root) or (hf directory, columns), so the returned tensors are shared: do not modify them in place.
    """
    if not isinstance(name, str) and hasattr(name, "dataset"):  # a DataConfig
        cfg = name
        if cfg.dataset == "hf":
            check_data_config(cfg, "data")
            return _load_hf_cached(*_hf_settings(cfg, "data"))
        return load_dataset(cfg.dataset, cfg.root)
    if name == "hf":
        raise ValueError("data set 'hf' needs its settings (path, image_column, label_column): call "
                         "load_dataset(cfg.data) with the config's data section")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return _load_cached(name, None)
    return _load_cached(name, str(_require_root(name, root)))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None) -> Dataset:
    """Memoise loads: benchmarks ask for the same set many times in one process."""
    if name == "digits":
        return _load_digits()
    assert root is not None
    if name in _IDX_SETS:
        return _load_idx_set(name, pathlib.Path(root))
    if name == "cifar10":
        return _load_cifar10(pathlib.Path(root))
    raise AssertionError(f"no loader for {name!r}")  # DATASETS and the loaders disagree: a bug


# --------------------------------------------------------------------------------------------
# digits (scikit-learn)
# --------------------------------------------------------------------------------------------


def _load_digits() -> Dataset:
    """sklearn's 8x8 digits with a fixed stratified 360-image test set.

    The split uses its own fixed seed (not the run seed) and our own splitter (not sklearn's), so
    the test set is a stable property of the data set across runs and library versions.  Pixels are
    scaled to [0, 1] and standardised with one mean/std from the training part (per-pixel statistics
    would divide by zero on the always-blank border pixels).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = train_val_split(labels, DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED, stratified=True)
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).contiguous()
    x_test = ((x_test - mean) / std).contiguous()
    return Dataset("digits", x_train, labels[train_idx].clone(), x_test, labels[test_idx].clone(), 10)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (idx files)
# --------------------------------------------------------------------------------------------


def _read_idx(path: pathlib.Path, expected_magic: int) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into a uint8 array, checking header and size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataCorruptError(f"corrupt idx file {path}: cannot decompress ({exc}); {_CORRUPT_FIX}") from exc
    except OSError as exc:
        raise DataCorruptError(f"cannot read idx file {path} ({exc.strerror or exc}); {_CORRUPT_FIX}") from exc
    if len(raw) < 8:
        raise DataCorruptError(
            f"corrupt idx file {path}: only {len(raw)} bytes, too short for a header; {_CORRUPT_FIX}")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise DataCorruptError(
            f"corrupt idx file {path}: magic number {magic}, expected {expected_magic}; {_CORRUPT_FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataCorruptError(f"corrupt idx file {path}: truncated header; {_CORRUPT_FIX}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataCorruptError(
            f"corrupt idx file {path}: header says {dims} ({expected} bytes) but the file has {len(raw)} bytes; "
            f"{_CORRUPT_FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_files(name: str, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Locate the four idx files (gz preferred, plain accepted) or say every path that was tried."""
    folder, _, _ = _IDX_SETS[name]
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
            f"fix: {_FIX_HINT} (layout: <root>/{folder}/raw/<name>-ubyte.gz)"
        )
    return found


def _load_idx_set(name: str, root: pathlib.Path) -> Dataset:
    """MNIST-style set: parse, validate, scale to [0, 1], standardise with the usual constants."""
    _, mean, std = _IDX_SETS[name]
    paths = _find_idx_files(name, root)
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"x_{split}"], _IDX_IMAGES_MAGIC)
        labels = _read_idx(paths[f"y_{split}"], _IDX_LABELS_MAGIC)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataCorruptError(f"{name}: unexpected idx shapes {images.shape} / {labels.shape} in "
                                   f"{paths[f'x_{split}']}; {_CORRUPT_FIX}")
        if images.shape[0] != labels.shape[0]:
            raise DataCorruptError(
                f"corrupt {name} {split} files: {images.shape[0]} images but {labels.shape[0]} labels "
                f"({paths[f'x_{split}']}, {paths[f'y_{split}']}); {_CORRUPT_FIX}"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataCorruptError(f"corrupt idx file {paths[f'y_{split}']}: label {int(labels.max())} >= 10; "
                                   f"{_CORRUPT_FIX}")
        x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
        x.div_(255.0).sub_(mean).div_(std)
        tensors[f"x_{split}"] = x
        tensors[f"y_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return Dataset(name=name, num_classes=10, **tensors)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python batches or JPEG zip)
# --------------------------------------------------------------------------------------------


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
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: {exc}; {_CORRUPT_FIX}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: expected a dict with b'data' and b'labels'; "
                               f"{_CORRUPT_FIX}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, expected uint8 "
                               f"(N, 3072); {_CORRUPT_FIX}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= 10)):
        raise DataCorruptError(f"corrupt CIFAR-10 batch {path}: labels do not match the data; {_CORRUPT_FIX}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_batches(batch_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """All six python batches; every one must exist."""
    names = [*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH]
    missing = [str(batch_dir / n) for n in names if not (batch_dir / n).is_file()]
    if missing:
        raise DataNotFoundError(
            f"data set 'cifar10': {batch_dir} is incomplete; looked for: {', '.join(missing)}; fix: {_FIX_HINT}"
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
        raise DataCorruptError(f"corrupt CIFAR-10 zip {path}: {exc}; {_CORRUPT_FIX}") from exc
    return out


def _cache_dir() -> pathlib.Path:
    """Where decoded arrays live between processes: $FEDLOTTERY_CACHE, else ~/.cache/fedlottery."""
    env = os.environ.get(ENV_CACHE, "")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "fedlottery"


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
    cache_file = _cache_dir() / f"{zip_path.stem}-v{_CIFAR_CACHE_VERSION}-{st.st_size}-{st.st_mtime_ns}.npz"
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
    _write_npz_atomic(cache_file, {**arrays, "key": key})
    return arrays


def _write_npz_atomic(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
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


def _load_cifar10(root: pathlib.Path) -> Dataset:
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
            f"(data_batch_1..5, test_batch) and {zip_path}; fix: {_FIX_HINT}"
        )
    mean = torch.tensor(_CIFAR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD, dtype=torch.float32).view(1, 3, 1, 1)
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        x = torch.from_numpy(arrays[f"x_{split}"]).to(torch.float32)
        x.div_(255.0).sub_(mean).div_(std)
        tensors[f"x_{split}"] = x
        tensors[f"y_{split}"] = torch.from_numpy(np.asarray(arrays[f"y_{split}"], dtype=np.int64).copy())
    return Dataset(name="cifar10", num_classes=10, **tensors)


# --------------------------------------------------------------------------------------------
# Hugging Face data sets saved on disk (dataset: hf)
# --------------------------------------------------------------------------------------------


def _hf_settings(cfg, key: str) -> tuple[str, str, str]:
    """(absolute directory, image column, label column) of an ``hf`` data section."""
    if not cfg.path:
        raise ConfigError(f"{key}.path: dataset hf needs the directory that DatasetDict.save_to_disk wrote "
                          f"(splits {' and '.join(HF_SPLITS)}); set {key}.path")
    directory = pathlib.Path(cfg.path).expanduser()
    return str(directory.resolve()), cfg.image_column or "image", cfg.label_column or "label"


def _hf_open(directory: str, image_column: str, label_column: str, key: str = "data"):
    """The saved DatasetDict's train and test splits, with their layout and columns checked (nothing decoded)."""
    import datasets as hf

    where = f"data set 'hf' at {directory} ({key}.path)"
    if not pathlib.Path(directory).is_dir():
        raise DataNotFoundError(f"{where} does not exist or is not a directory; fix: give {key}.path the "
                                "directory DatasetDict.save_to_disk wrote")
    try:
        saved = hf.load_from_disk(directory)
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{where}: not written by save_to_disk ({' '.join(str(exc).split())}); fix: save "
                                f"it with DatasetDict({', '.join(f'{s}=...' for s in HF_SPLITS)}).save_to_disk(...)"
                                ) from None
    except Exception as exc:  # noqa: BLE001 - damaged arrow / json files
        raise DataCorruptError(f"{where} cannot be read: {type(exc).__name__}: {' '.join(str(exc).split())}; "
                               f"{_HF_FIX}") from None
    if not isinstance(saved, hf.DatasetDict):
        raise DataNotFoundError(f"{where} holds one Dataset, not a DatasetDict with splits {' and '.join(HF_SPLITS)}; "
                                f"fix: save DatasetDict({', '.join(f'{s}=...' for s in HF_SPLITS)}) there")
    missing = [s for s in HF_SPLITS if s not in saved]
    if missing:
        raise DataNotFoundError(f"{where} has no split {' or '.join(missing)} (its splits: {', '.join(saved)}); fix: "
                                f"save a DatasetDict with splits {' and '.join(HF_SPLITS)}")
    splits = [saved[s] for s in HF_SPLITS]
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        for split_name, split in zip(HF_SPLITS, splits):
            if column not in split.column_names:
                raise ConfigError(f"{key}.{option}: no column {column!r} in the {split_name} split of {directory} "
                                  f"(its columns: {', '.join(split.column_names)})")
    image_feature, label_feature = splits[0].features[image_column], splits[0].features[label_column]
    if not (isinstance(image_feature, hf.Image) or _hf_is_numeric_array(image_feature)):
        raise ConfigError(f"{key}.image_column: column {image_column!r} of {directory} holds {image_feature}, not "
                          "images (an Image feature or arrays of numbers)")
    if not (isinstance(label_feature, hf.ClassLabel) or (isinstance(label_feature, hf.Value) and (
            label_feature.dtype == "string" or label_feature.dtype.startswith(("int", "uint"))))):
        raise ConfigError(f"{key}.label_column: column {label_column!r} of {directory} holds {label_feature}, not "
                          "labels (ClassLabel, integers or strings)")
    for split_name, split in zip(HF_SPLITS, splits):
        if split.num_rows == 0:
            raise DataCorruptError(f"{where}: the {split_name} split is empty; {_HF_FIX}")
    return splits[0], splits[1]


def _hf_is_numeric_array(feature) -> bool:
    """An Array2D/3D or (nested) list feature whose leaves are numbers."""
    import datasets as hf

    if isinstance(feature, (hf.Array2D, hf.Array3D)):
        return True
    inner = getattr(feature, "feature", None)
    if inner is None or isinstance(feature, hf.Value):
        return False
    while getattr(inner, "feature", None) is not None and not isinstance(inner, hf.Value):
        inner = inner.feature
    return isinstance(inner, hf.Value) and inner.dtype not in ("string", "large_string", "binary")


@functools.lru_cache(maxsize=4)
def _load_hf_cached(directory: str, image_column: str, label_column: str) -> Dataset:
    """Decode a saved Hugging Face DatasetDict into the shared `Dataset` record.

    Images: an Image column is decoded with PIL, in the first training image's mode (grayscale modes as one
    channel, anything else as RGB); array columns are (H, W), (H, W, C) or (C, H, W) per image (H, W, C when
    the last axis has 1, 3 or 4 entries).  Integer pixels are divided by 255, float pixels taken as they are;
    then every channel is standardised with the training split's mean and std (as MNIST and CIFAR-10 are
    with theirs).  Labels: ClassLabel and integer columns as they are (0 .. num_classes - 1, num_classes from
    the ClassLabel or the largest label + 1), string columns numbered in sorted order.
    """
    import datasets as hf

    train, test = _hf_open(directory, image_column, label_column)
    where = f"data set 'hf' at {directory}"
    mode = None
    if isinstance(train.features[image_column], hf.Image):
        first = train.select_columns([image_column])[0][image_column]
        mode = "L" if first.mode in _HF_GRAY_MODES else "RGB"
    pixels = [_hf_pixels(split, image_column, mode, f"{where}, {name} split") for name, split in
              zip(HF_SPLITS, (train, test))]
    if pixels[0].shape[1:] != pixels[1].shape[1:]:
        raise DataCorruptError(f"{where}: train images are {pixels[0].shape[1:]} (C, H, W) but test images "
                               f"{pixels[1].shape[1:]}; {_HF_FIX}")
    x_train, x_test = (torch.from_numpy(p) for p in pixels)
    dims = (0, 2, 3)
    mean = x_train.to(torch.float64).mean(dim=dims, keepdim=True)
    std = x_train.to(torch.float64).std(dim=dims, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x_train = ((x_train - mean) / std).to(torch.float32).contiguous()
    x_test = ((x_test - mean) / std).to(torch.float32).contiguous()
    y_train, y_test, num_classes = _hf_labels(train, test, label_column, where)
    name = f"hf:{pathlib.Path(directory).name}"
    return Dataset(name, x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), num_classes)


def _hf_pixels(split, column: str, mode: str | None, where: str) -> np.ndarray:
    """One split's images as float32 (N, C, H, W), integers scaled to [0, 1]."""
    if mode is not None:  # an Image feature: decode with PIL, converting every image to `mode`
        images = []
        batch = 1000
        for start in range(0, split.num_rows, batch):
            for i, img in enumerate(split.select_columns([column])[start:start + batch][column]):
                array = np.asarray(img.convert(mode) if img.mode != mode else img)
                if images and array.shape != images[0].shape:
                    raise DataCorruptError(f"{where}: image {start + i} is {array.shape[:2]} pixels, the first "
                                           f"{images[0].shape[:2]}; every image must have one size; {_HF_FIX}")
                images.append(array)
        raw = np.stack(images)
        raw = raw[:, None] if raw.ndim == 3 else raw.transpose(0, 3, 1, 2)
    else:
        try:
            raw = np.asarray(split.select_columns([column]).with_format("numpy")[:][column])
        except (ValueError, TypeError) as exc:
            raise DataCorruptError(f"{where}: images of column {column!r} are not one array shape ({exc}); "
                                   f"{_HF_FIX}") from None
        if raw.dtype == object or raw.ndim not in (3, 4):
            raise DataCorruptError(f"{where}: column {column!r} is not (N, H, W) or (N, H, W, C) / (N, C, H, W) "
                                   f"numbers (got {raw.dtype} {raw.shape}); {_HF_FIX}")
        if raw.ndim == 3:
            raw = raw[:, None]
        elif raw.shape[-1] in (1, 3, 4):
            raw = raw.transpose(0, 3, 1, 2)
        elif raw.shape[1] not in (1, 3, 4):
            raise DataCorruptError(f"{where}: cannot tell the channel axis of images shaped {raw.shape[1:]}; store "
                                   f"them as (H, W, C) or (C, H, W) with 1, 3 or 4 channels; {_HF_FIX}")
    scale = 255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0
    return np.ascontiguousarray(raw, dtype=np.float32) / np.float32(scale)


def _hf_labels(train, test, column: str, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """int64 train and test labels and the number of classes."""
    import datasets as hf

    feature = train.features[column]
    raw = [split.select_columns([column]).with_format("numpy")[:][column] for split in (train, test)]
    if isinstance(feature, hf.Value) and feature.dtype in ("string", "large_string"):
        names = sorted(set(raw[0].tolist()) | set(raw[1].tolist()))
        code = {n: i for i, n in enumerate(names)}
        labels = [np.fromiter((code[v] for v in r.tolist()), dtype=np.int64, count=len(r)) for r in raw]
        return labels[0], labels[1], len(names)
    labels = [np.asarray(r, dtype=np.int64) for r in raw]
    low = min(int(lab.min()) for lab in labels)
    if low < 0:
        raise DataCorruptError(f"{where}: label {low} in column {column!r} (Hugging Face marks unlabelled examples "
                               f"with -1); give every train and test example a label >= 0")
    high = max(int(lab.max()) for lab in labels)
    num_classes = feature.num_classes if isinstance(feature, hf.ClassLabel) else high + 1
    if high >= num_classes:
        raise DataCorruptError(f"{where}: label {high} in column {column!r} but the ClassLabel has {num_classes} "
                               f"names; {_HF_FIX}")
    return labels[0], labels[1], int(num_classes)


# --------------------------------------------------------------------------------------------
# Train/validation split
# --------------------------------------------------------------------------------------------


def train_val_split(
    labels: torch.Tensor, val_size: int, seed: int, stratified: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out `val_size` examples; returns sorted int64 (train_indices, val_indices).

    Deterministic in `seed` (numpy PCG64, independent of torch's global RNG).  With `stratified`,
    each class gets its share of `val_size` by largest-remainder rounding (ties to the smaller
    class label), so class proportions match the full set as closely as integers allow.
    """
    y = torch.as_tensor(labels)
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integers, got {y.dtype}")
    n = int(y.shape[0])
    val_size = int(val_size)
    if val_size < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    if val_size >= n and val_size > 0:
        raise ValueError(f"val_size={val_size} leaves no training data out of {n} examples")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if val_size == 0:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)

    rng = np.random.default_rng(int(seed))
    y_np = y.detach().cpu().numpy()
    if not stratified:
        val = rng.permutation(n)[:val_size]
    else:
        classes, inverse, counts = np.unique(y_np, return_inverse=True, return_counts=True)
        scaled = counts.astype(np.int64) * val_size  # exact share of class c is scaled[c] / n
        quota = scaled // n
        remainder = val_size - int(quota.sum())
        # Largest fractional parts first (integer arithmetic, so no float ties); stable sort keeps
        # the smaller class label first on equal remainders.
        order = np.argsort(-(scaled % n), kind="stable")
        quota[order[:remainder]] += 1
        picks = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            picks.append(rng.permutation(members)[: quota[c]])
        val = np.concatenate(picks)
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return (
        torch.from_numpy(np.flatnonzero(~mask).astype(np.int64)),
        torch.from_numpy(np.flatnonzero(mask).astype(np.int64)),
    )
