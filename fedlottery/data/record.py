"""The `Dataset` record every loader returns, and the fix hints their error messages share.

It sits below the loaders (digits, idx, cifar, hf) and the entry point (datasets) so that each of them can
build the record without importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = ("train", "test")

FIX_HINT = "pass data.root in the config, set FEDLOTTERY_DATA, or put the files at ../shared/data"
CORRUPT_FIX = "fix: replace it with an intact copy (or point data.root / $FEDLOTTERY_DATA at one)"


@dataclass(frozen=True)
class PixelScale:
    """How stored uint8 pixels become a model's inputs: divided by 255, minus `mean`, over `std` (floats, or
    tensors shaped to broadcast over N x C x H x W), in that order, in float32."""

    mean: float | torch.Tensor
    std: float | torch.Tensor

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        # The same three float32 operations, in the same order, as normalising the whole set once: each is
        # exactly rounded element by element, so a subset normalised later holds the very same bits.
        return pixels.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of normalised images and labels, shared read-only between callers.

    Instances may be cached and handed to several callers, so the tensors must be treated as
    immutable: clone before modifying them in place.  Read the model's inputs with `inputs`: a loader of
    8-bit images may keep them as uint8 pixels (`pixels` says how to normalise them), a quarter of the float32
    set's memory in every process that holds the data (MNIST: 55 instead of 220 MB; CIFAR-10: 184 instead of
    737 MB), and `inputs` normalises only the images asked for.  Equality is identity (comparing tensors
    element-wise would be ambiguous), and the repr shows shapes instead of data.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    pixels: PixelScale | None = None

    def inputs(self, split: str, idx: torch.Tensor | None = None) -> torch.Tensor:
        """float32 NCHW normalised images of `split` ("train" or "test"), all or those at `idx`: the stored
        tensor itself when it is already float32 and idx is None (read-only, like every field), else new."""
        x: torch.Tensor = getattr(self, f"x_{split}")
        if idx is not None:
            x = x[idx]
        return x if self.pixels is None else self.pixels.apply(x)

    def __post_init__(self) -> None:
        """Reject malformed data early, where the bug is, rather than deep inside training."""
        stored = torch.float32 if self.pixels is None else torch.uint8
        for split in SPLITS:
            x: torch.Tensor = getattr(self, f"x_{split}")
            y: torch.Tensor = getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"{self.name}: x_{split} and y_{split} must be torch tensors")
            if x.dtype != stored or x.dim() != 4:
                raise ValueError(f"{self.name}: x_{split} must be {stored} (N, C, H, W)"
                                 f"{' (uint8 because pixels is set)' if self.pixels else ''}, got {x.dtype} "
                                 f"{tuple(x.shape)}")
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
