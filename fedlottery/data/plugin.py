"""A user's own data set (docs/plugins.md): a loader named by import path or entry point, turned into `Dataset`.

``data.dataset`` names a loader by import path (``my_package.data:load``) or by an entry point of the group
``fedlottery.datasets``. The loader takes no argument (or a keyword ``root``: the data root that
`resolve_data_root` finds for ``data.root``, possibly None) and returns ``(train, test)`` or ``(train, test,
num_classes)``, each split either

- a pair ``(x, y)`` of tensors or numpy arrays: x of shape (N, C, H, W), or (N, H, W) for one channel, and y
  of shape (N,) holding integer class indices; or
- any sequence of samples, torchvision-style (``len`` and ``[i] -> (x, y)``): x a tensor or array of shape
  (C, H, W) or (H, W), or a PIL image; y an integer;

or a ready `Dataset` record. Pixels are taken as they are when floating point (normalise them in the loader)
and divided by 255 when uint8 (what torchvision's ToTensor does); nothing else is changed, so every partition
scheme, the partition cache (keyed by the labels themselves) and the rest of fedlottery see the record as
they see a built-in set. ``num_classes``, when not returned, is the largest label + 1.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch

from fedlottery.config.plugins import resolve_or_explain
from fedlottery.data.record import Dataset
from fedlottery.errors import ConfigError

ENTRY_POINT_GROUP = "fedlottery.datasets"
_FIX = "docs/plugins.md describes what a loader returns"


def loader(name: str, builtin: tuple[str, ...], key: str = "data.dataset") -> Callable:
    """The loader `name` stands for (an import path or an installed entry point), or a ConfigError naming `key`
    that lists the choices (`builtin` first)."""
    return resolve_or_explain(name, ENTRY_POINT_GROUP, key, "data set", list(builtin), "a loader's")


def takes_root(load: Callable) -> bool:
    """Whether the loader asks for the data root (a parameter named ``root``); the root is looked up only then,
    so a loader that reads no files never fails on a missing one."""
    try:
        return "root" in inspect.signature(load).parameters
    except (TypeError, ValueError):  # no signature to read: call it without arguments
        return False


def to_record(name: str, returned: Any) -> Dataset:
    """What a loader returned, as the `Dataset` record; a ConfigError (key data.dataset) says what is wrong."""
    if isinstance(returned, Dataset):
        return returned
    where = f"data.dataset: {name}"
    if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3):
        raise ConfigError(f"{where} returned a {type(returned).__name__}; expected (train, test) or (train, test, "
                          f"num_classes); {_FIX}")
    (x_train, y_train), (x_test, y_test) = (_split(s, f"{where}: the {n} split") for n, s in
                                            zip(("train", "test"), returned[:2]))
    num_classes = _num_classes(returned[2] if len(returned) == 3 else None, (y_train, y_test), where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"{where}: train images are {tuple(x_train.shape[1:])} (C, H, W) but test images "
                          f"{tuple(x_test.shape[1:])}; give both splits the same image shape")
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def _split(split: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, from a pair of arrays or a sequence of samples, as (float32 NCHW images, int64 labels)."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and _is_array(split[0]):
        x, y = (torch.as_tensor(a).detach().cpu() for a in split)
    elif hasattr(split, "__len__") and hasattr(split, "__getitem__"):
        x, y = _stack_samples(split, where)
    else:
        raise ConfigError(f"{where} is a {type(split).__name__}; expected a pair (x, y) of tensors or arrays, or "
                          f"a data set object with len() and [i] -> (x, y); {_FIX}")
    return _images(x, where), _labels(y, len(x), where)


def _is_array(a: Any) -> bool:
    return isinstance(a, (torch.Tensor, np.ndarray))


def _stack_samples(samples: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision-style data set read sample by sample (once per process), stacked into two tensors."""
    if len(samples) == 0:
        raise ConfigError(f"{where} is empty; every split needs at least one sample")
    xs, ys = [], []
    for i in range(len(samples)):
        sample = samples[i]
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
            raise ConfigError(f"{where}: sample {i} is a {type(sample).__name__}, not a pair (x, y); {_FIX}")
        xs.append(_sample_image(sample[0], f"{where}: sample {i}"))
        ys.append(_sample_label(sample[1], f"{where}: sample {i}"))
    if len({tuple(x.shape) for x in xs}) > 1:
        raise ConfigError(f"{where}: the samples' images differ in shape (sample 0 is {tuple(xs[0].shape)}); "
                          "resize them to one shape in the data set")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _sample_image(x: Any, where: str) -> torch.Tensor:
    """A sample's image as a (C, H, W) or (H, W) tensor; a PIL image (H, W[, C]) is moved channels-first."""
    from PIL import Image

    if isinstance(x, Image.Image):
        pixels = torch.from_numpy(np.array(x))
        return pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels
    if not _is_array(x):
        raise ConfigError(f"{where}: the image is a {type(x).__name__}; expected a tensor, a numpy array or a "
                          "PIL image (e.g. add transform=ToTensor() to a torchvision data set)")
    return torch.as_tensor(x).detach().cpu()


def _sample_label(y: Any, where: str) -> int:
    if isinstance(y, (torch.Tensor, np.ndarray)) and y.ndim == 0:
        y = y.item()
    if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)):
        raise ConfigError(f"{where}: the label is {y!r} ({type(y).__name__}); expected an integer class index")
    return int(y)


def _images(x: torch.Tensor, where: str) -> torch.Tensor:
    """float32 (N, C, H, W): one channel added to (N, H, W); uint8 pixels divided by 255; all finite."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ConfigError(f"{where}: x has shape {tuple(x.shape)}; expected (N, C, H, W) images or (N, H, W) for "
                          "one channel (a vector of D features: reshape it to (N, 1, 1, D))")
    if len(x) == 0:
        raise ConfigError(f"{where} is empty; every split needs at least one sample")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255
    elif not x.dtype.is_floating_point:
        raise ConfigError(f"{where}: x is {x.dtype}; expected floating point (normalised) or uint8 pixels "
                          "(divided by 255)")
    x = x.to(torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{where}: x holds NaN or infinite values; clean them in the loader")
    return x


def _labels(y: torch.Tensor, n: int, where: str) -> torch.Tensor:
    """int64 (N,) class indices >= 0."""
    if y.dim() != 1 or len(y) != n:
        raise ConfigError(f"{where}: y has shape {tuple(y.shape)}; expected ({n},), one label per image")
    if y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise ConfigError(f"{where}: y is {y.dtype}; expected integer class indices 0 .. num_classes - 1 (whole "
                          "numbers stored as floats: y.long())")
    y = y.to(torch.int64).contiguous()
    if int(y.min()) < 0:
        raise ConfigError(f"{where}: y holds the negative label {int(y.min())}; number the classes from 0")
    return y


def _num_classes(declared: Any, labels: tuple[torch.Tensor, torch.Tensor], where: str) -> int:
    """The declared number of classes, checked against the labels, or the largest label + 1."""
    largest = max(int(y.max()) for y in labels)
    if declared is None:
        return largest + 1
    if isinstance(declared, bool) or not isinstance(declared, (int, np.integer)) or declared < 1:
        raise ConfigError(f"{where}: num_classes (the third value returned) is {declared!r}; expected a positive "
                          "integer")
    if largest >= declared:
        raise ConfigError(f"{where}: a label is {largest} but num_classes is {declared}; labels run 0 .. "
                          "num_classes - 1")
    return int(declared)


__all__ = ["ENTRY_POINT_GROUP", "loader", "takes_root", "to_record"]
