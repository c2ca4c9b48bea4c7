"""The `Dataset` record every loader returns, and the fix hints their error messages share.

It sits below the loaders (digits, idx, cifar, hf) and the entry point (datasets) so that each of them can
build the record without importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FIX_HINT = "pass data.root in the config, set FEDLOTTERY_DATA, or put the files at ../shared/data"
CORRUPT_FIX = "fix: replace it with an intact copy (or point data.root / $FEDLOTTERY_DATA at one)"


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
