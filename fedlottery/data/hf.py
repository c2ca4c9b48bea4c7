"""Hugging Face data sets that ``DatasetDict.save_to_disk`` wrote (``dataset: hf``), read offline.

`open_splits` checks layout and columns without decoding an image (what `check_data_config` needs);
`load_hf` decodes both splits into the `Dataset` record.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from fedlottery.data.record import Dataset
from fedlottery.errors import ConfigError, DataCorruptError, DataNotFoundError

HF_SPLITS: tuple[str, str] = ("train", "test")  # the DatasetDict splits an `hf` data set must have
_HF_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_HF_FIX = "fix: save it again with DatasetDict.save_to_disk as docs/getting-started.md's Data section describes"


def settings(cfg, key: str) -> tuple[str, str, str]:
    """(absolute directory, image column, label column) of an ``hf`` data section."""
    if not cfg.path:
        raise ConfigError(f"{key}.path: dataset hf needs the directory that DatasetDict.save_to_disk wrote "
                          f"(splits {' and '.join(HF_SPLITS)}); set {key}.path")
    directory = pathlib.Path(cfg.path).expanduser()
    return str(directory.resolve()), cfg.image_column or "image", cfg.label_column or "label"


def open_splits(directory: str, image_column: str, label_column: str, key: str = "data"):
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


def load_hf(directory: str, image_column: str, label_column: str) -> Dataset:
    """Decode a saved Hugging Face DatasetDict into the shared `Dataset` record.

    Images: an Image column is decoded with PIL, in the first training image's mode (grayscale modes as one
    channel, anything else as RGB); array columns are (H, W), (H, W, C) or (C, H, W) per image (H, W, C when
    the last axis has 1, 3 or 4 entries).  Integer pixels are divided by 255, float pixels taken as they are;
    then every channel is standardised with the training split's mean and std (as MNIST and CIFAR-10 are
    with theirs).  Labels: ClassLabel and integer columns as they are (0 .. num_classes - 1, num_classes from
    the ClassLabel or the largest label + 1), string columns numbered in sorted order.
    """
    import datasets as hf

    train, test = open_splits(directory, image_column, label_column)
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
