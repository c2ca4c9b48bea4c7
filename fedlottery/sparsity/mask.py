"""The Mask: which entries of each prunable tensor a (sub)network keeps."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch


class Mask:
    """Boolean keep-tensors keyed by parameter name (True = kept).

    Plain tensors and no model reference, so the same object serves the centralized IMP runner, federated
    clients and the server's per-client bookkeeping.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = {name: t.detach().to(torch.bool).cpu() for name, t in tensors.items()}

    @classmethod
    def ones(cls, shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> "Mask":
        return cls({name: torch.ones(tuple(shape), dtype=torch.bool) for name, shape in shapes.items()})

    @classmethod
    def ones_like(cls, params: Mapping[str, torch.Tensor]) -> "Mask":
        return cls.ones({name: p.shape for name, p in params.items()})

    # --- container protocol -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def items(self):
        return self._tensors.items()

    def names(self) -> list[str]:
        return list(self._tensors)

    def copy(self) -> "Mask":
        return Mask({name: t.clone() for name, t in self._tensors.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or self.names() != other.names():
            return False
        return all(torch.equal(self[n], other[n]) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density():.4f})"

    # --- statistics ---------------------------------------------------------------------------------------
    def numel(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def num_kept(self) -> int:
        return sum(int(t.sum()) for t in self._tensors.values())

    def density(self) -> float:
        """Kept fraction over all prunable entries."""
        total = self.numel()
        return self.num_kept() / total if total else 1.0

    def kept_per_layer(self) -> dict[str, int]:
        return {name: int(t.sum()) for name, t in self._tensors.items()}

    def layer_densities(self) -> dict[str, float]:
        return {name: int(t.sum()) / t.numel() for name, t in self._tensors.items()}

    def hamming(self, other: "Mask") -> float:
        """Normalised Hamming distance: the fraction of entries whose keep/prune state differs."""
        self._check_compatible(other)
        differing = sum(int((self[n] ^ other[n]).sum()) for n in self)
        return differing / self.numel()

    def _check_compatible(self, other: "Mask") -> None:
        if self.names() != other.names() or any(self[n].shape != other[n].shape for n in self):
            raise ValueError("masks cover different tensors or shapes")

    # --- applying -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, params: Mapping[str, torch.Tensor]) -> None:
        """Zero the pruned entries of `params` in place (tensors not in the mask are left alone)."""
        for name, keep in self._tensors.items():
            target = params[name]
            target.mul_(keep.to(device=target.device, dtype=target.dtype))

    # --- serialisation ------------------------------------------------------------------------------------
    def __reduce__(self):
        """Pickled bit-packed (n/8 bytes): server checkpoints hold a mask per client."""
        return (Mask.from_packed, (self.to_packed(),))

    def to_packed(self) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
        """Bit-packed form (1 bit per entry, numpy's big-endian bit order), per tensor: (shape, uint8 bytes)."""
        return {n: (tuple(t.shape), np.packbits(t.numpy().reshape(-1))) for n, t in self._tensors.items()}

    @classmethod
    def from_packed(cls, packed: Mapping[str, tuple[tuple[int, ...], np.ndarray]]) -> "Mask":
        tensors = {}
        for name, (shape, bits) in packed.items():
            count = int(np.prod(shape, dtype=np.int64))
            if len(bits) != (count + 7) // 8:
                raise ValueError(f"packed mask {name!r}: {len(bits)} bytes cannot hold shape {shape}")
            flat = np.unpackbits(np.asarray(bits, dtype=np.uint8), count=count).astype(bool)
            tensors[name] = torch.from_numpy(flat.reshape(shape))
        return cls(tensors)

    def save(self, path: str | Path) -> None:
        """Write the bit-packed mask as an .npz (names, shapes, bits)."""
        arrays = {}
        for i, (name, (shape, bits)) in enumerate(self.to_packed().items()):
            arrays[f"name_{i}"] = np.array(name)
            arrays[f"shape_{i}"] = np.array(shape, dtype=np.int64)
            arrays[f"bits_{i}"] = bits
        buffer = io.BytesIO()
        np.savez_compressed(buffer, count=np.array(len(self)), **arrays)
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Mask":
        with np.load(Path(path)) as data:
            packed = {
                str(data[f"name_{i}"]): (tuple(int(s) for s in data[f"shape_{i}"]), data[f"bits_{i}"])
                for i in range(int(data["count"]))
            }
        return cls.from_packed(packed)
