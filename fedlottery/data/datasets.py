"""The entry point to the data sets the simulator trains on: `load_dataset`, the data root, config checks.

Nothing here downloads: build and benchmark machines reach package registries only, so every
loader reads files from a local data root (see `resolve_data_root`), for ``digits`` from the
copy that ships inside scikit-learn, and for ``hf`` from a Hugging Face data set that
``DatasetDict.save_to_disk`` wrote (``datasets.load_from_disk``, offline).  All loaders return the same
`Dataset` record (fedlottery.data.record): NCHW images, float32 and normalised or (MNIST-style sets, CIFAR-10)
uint8 pixels normalised when read through `Dataset.inputs`, and int64 labels.

One module per file format, each readable alone: `digits` (scikit-learn), `idx` (MNIST, Fashion-MNIST),
`cifar` (python batches, JPEG zip and its .npz cache), `hf` (Hugging Face on disk), `plugin` (a user's own
loader, named by import path or entry point); `splits` holds the train/validation splitter.  This module picks
the loader and memoises what it returns.
"""

from __future__ import annotations

import functools
import os
import pathlib

from fedlottery.data import hf, plugin
from fedlottery.data.cifar import load_cifar10
from fedlottery.data.digits import load_digits
from fedlottery.data.idx import IDX_SETS, load_idx_set
from fedlottery.data.record import FIX_HINT, Dataset
from fedlottery.data.splits import train_val_split
from fedlottery.errors import DataCorruptError, DataNotFoundError

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

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "hf")

ENV_DATA = "FEDLOTTERY_DATA"

# Repository root = parent of the `fedlottery` package directory.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


# DataNotFoundError (missing root or files) and DataCorruptError (unreadable files) are defined in
# fedlottery.errors, as subclasses of UserError (the command line reports them in one line, exit code 2).


def check_data_config(cfg, path: str = "data") -> None:
    """Check a config's `data` section against the loaders (fedlottery.config cannot import this package).

    For ``hf`` this opens the saved data set (memory-mapped, no image is decoded) and checks its splits and
    columns, so a wrong path or column name fails before anything starts. Any other name is a user's loader
    (fedlottery.data.plugin): it is imported, not called (loading may take long; `load_dataset` checks what
    it returns)."""
    if cfg.dataset not in DATASETS:
        plugin.loader(cfg.dataset, DATASETS, f"{path}.dataset")
        return
    if cfg.dataset == "hf":
        hf.open_splits(*hf.settings(cfg, path), key=path)


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
                f"fix: {FIX_HINT}"
            )
        return path.resolve()
    env = os.environ.get(ENV_DATA, "")
    if env:
        path = pathlib.Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(
                f"data root {path} (from ${ENV_DATA}) does not exist or is not a directory; fix: {FIX_HINT}"
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
            f"data set {name!r}: no data root found; looked at: {', '.join(looked)}; fix: {FIX_HINT}"
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
    read files under the root found by `resolve_data_root`.  Any other name is a user's loader (an import path
    or an entry point, fedlottery.data.plugin), given that root when it takes a ``root`` keyword.  Results
    are cached in-process per (name, resolved root) or (hf directory, columns), so the returned tensors are
    shared: do not modify them in place.  Nothing of a user's data set is cached on disk: its loader's code
    and files are the user's, and fedlottery cannot tell when they change.
    """
    if not isinstance(name, str) and hasattr(name, "dataset"):  # a DataConfig
        cfg = name
        if cfg.dataset == "hf":
            check_data_config(cfg, "data")
            return _load_hf_cached(*hf.settings(cfg, "data"))
        return load_dataset(cfg.dataset, cfg.root)
    if name == "hf":
        raise ValueError("data set 'hf' needs its settings (path, image_column, label_column): call "
                         "load_dataset(cfg.data) with the config's data section")
    if name not in DATASETS:
        return _load_user_cached(name, None if root is None else str(root))
    if name == "digits":
        return _load_cached(name, None)
    return _load_cached(name, str(_require_root(name, root)))


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str | None) -> Dataset:
    """Memoise loads: benchmarks ask for the same set many times in one process."""
    if name == "digits":
        return load_digits()
    assert root is not None
    if name in IDX_SETS:
        return load_idx_set(name, pathlib.Path(root))
    if name == "cifar10":
        return load_cifar10(pathlib.Path(root))
    raise AssertionError(f"no loader for {name!r}")  # DATASETS and the loaders disagree: a bug


@functools.lru_cache(maxsize=4)
def _load_hf_cached(directory: str, image_column: str, label_column: str) -> Dataset:
    """Memoise `hf.load_hf` per (directory, columns), as `_load_cached` does for the named sets."""
    return hf.load_hf(directory, image_column, label_column)


@functools.lru_cache(maxsize=4)
def _load_user_cached(name: str, root: str | None) -> Dataset:
    """A user's data set, memoised in-process per (name, data.root) like the built-in sets: its loader runs
    once per process (the command line, the server, each client worker)."""
    load = plugin.loader(name, DATASETS)
    return plugin.to_record(name, load(root=resolve_data_root(root)) if plugin.takes_root(load) else load())
