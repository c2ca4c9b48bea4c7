"""Where a federated client's own state lives between rounds: a versioned client-state store.

A client's state (per strategy, or variant label) is the mask it holds, its scalar memory (CELL's threshold), its
personal tensors (FedLTN's BatchNorm), its last trained weights (the "deployed" model), any tensors the strategy
keeps for itself beside the model (Ditto's personal model) and what an STC uplink withheld (its error-feedback
residual). The server names, in every
message, which version the client must start from (`state-version`: the round of the client's last reply it
*accepted*, 0 for a fresh client); after training the client saves a new version under the current round.
So a reply the server drops, or a round lost to a crash, never desynchronises the two sides: the client
simply starts again from the version the server knows. The server also names the version its last
checkpoint holds (`state-keep`), which the client must not delete, so a killed run resumes from disk.

Two stores, one interface:
- `DirectoryStore(root)`: one file per (strategy, partition, version) under `root`; used by simulations, so
  client state sits on disk (durable across kills, off the driver's memory, bounded by three versions per
  client). On a multi-node Ray cluster `root` must be a filesystem every node mounts at the same path.
- `ContextStore(context)`: inside Flower's `Context.state`, for a real deployment where each device runs its
  own SuperNode and keeps its own state.
"""
from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context

from fedlottery.sparsity import Mask


class ClientStateError(RuntimeError):
    """A client's state version is missing or unreadable, or a message asked for a location not this node's."""


# ---- where a node keeps its client state: the node's own configuration, never a message ---------------------
STATE_DIR_KEY = "state-dir"  # a real SuperNode: flower-supernode --node-config "state-dir='/path'"
STATE_DIR_ENV = "FEDLOTTERY_STATE_DIR"  # a simulation's client actors: set by fedlottery's launcher


def node_state_dir(node_config) -> str:
    """This node's client-state directory: its node config's `state-dir`, else $FEDLOTTERY_STATE_DIR (what
    fedlottery.runtime.ray_runtime.start_ray gives a simulation's actors: the run directory's client_state/);
    "" when neither is set (state then lives in the node's own Context). A path in a message would let
    whoever sends messages make every client read and delete files wherever it names."""
    return str(node_config.get(STATE_DIR_KEY, "") or os.environ.get(STATE_DIR_ENV, ""))


def check_requested_state_dir(requested: str, own: str) -> None:
    """A server may say where it expects client state (so a misconfigured node fails at setup, not mid-run);
    it can never move it: a location other than the node's own is refused."""
    if requested and (not own or os.path.realpath(requested) != os.path.realpath(own)):
        mine = f"its own is {own!r}" if own else "it has none of its own (its Context holds its state)"
        raise ClientStateError(
            f"the setup query names client-state directory {requested!r}, but this node keeps its client state "
            f"where its own configuration says ({mine}); a message cannot choose a node's files: set the node's "
            f"`{STATE_DIR_KEY}` node config (or ${STATE_DIR_ENV} for simulation actors) to the run's directory")


@dataclass
class ClientState:
    """One client's state for one strategy. `mask` None: the dense mask (a fresh client)."""

    mask: Mask | None = None
    memory: dict[str, float] = field(default_factory=dict)
    personal: dict[str, torch.Tensor] = field(default_factory=dict)
    trained: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # a strategy's own tensors (ClientUpdate.keep)
    # what an STC uplink (comm.uplink.stc) withheld so far, per tensor: it goes up with the next update
    residual: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Masks bit-packed (n/8 bytes), tensors as they are; readable with torch.load(weights_only=True)."""
        packed = None
        if self.mask is not None:
            packed = {n: (list(shape), torch.from_numpy(bits)) for n, (shape, bits) in self.mask.to_packed().items()}
        buffer = io.BytesIO()
        torch.save({"mask": packed, "memory": dict(self.memory),
                    "personal": {k: v.detach().cpu() for k, v in self.personal.items()},
                    "trained": {k: v.detach().cpu() for k, v in self.trained.items()},
                    "kept": {k: v.detach().cpu() for k, v in self.kept.items()},
                    "residual": {k: v.detach().cpu() for k, v in self.residual.items()}}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientState":
        raw = torch.load(io.BytesIO(data), weights_only=True)
        mask = None
        if raw["mask"] is not None:
            mask = Mask.from_packed({n: (tuple(shape), bits.numpy().astype(np.uint8))
                                     for n, (shape, bits) in raw["mask"].items()})
        # "kept" and "residual" are newer than the other fields: state written before them has none
        return cls(mask, dict(raw["memory"]), dict(raw["personal"]), dict(raw["trained"]), dict(raw.get("kept", {})),
                   dict(raw.get("residual", {})))


class ClientStateStore(ABC):
    """Versioned client state keyed by (strategy, partition id, version = the round that produced it)."""

    def load(self, strategy: str, partition_id: int, version: int) -> ClientState:
        """Version 0 is the fresh state; any other version must exist."""
        if version == 0:
            return ClientState()
        data = self._read(strategy, partition_id, version)
        if data is None:
            raise ClientStateError(
                f"state version {version} of partition {partition_id} ({strategy}) is missing from {self}: "
                "the run's client state was removed, or is not shared with this node")
        return ClientState.from_bytes(data)

    def save(self, strategy: str, partition_id: int, version: int, state: ClientState) -> None:
        self._write(strategy, partition_id, version, state.to_bytes())

    def keep_only(self, strategy: str, partition_id: int, versions: set[int]) -> None:
        """Delete this client's other versions (at most three stay: checkpointed, current, new)."""
        for version in self._versions(strategy, partition_id):
            if version not in versions:
                self._delete(strategy, partition_id, version)

    # ---- what a backend implements ----
    @abstractmethod
    def _read(self, strategy: str, partition_id: int, version: int) -> bytes | None:
        """Backend primitive."""

    @abstractmethod
    def _write(self, strategy: str, partition_id: int, version: int, data: bytes) -> None:
        """Backend primitive."""

    @abstractmethod
    def _versions(self, strategy: str, partition_id: int) -> list[int]:
        """Backend primitive."""

    @abstractmethod
    def _delete(self, strategy: str, partition_id: int, version: int) -> None:
        """Backend primitive."""


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DirectoryStore(ClientStateStore):
    """root/<strategy>/<partition>/<version>.pt, each written atomically (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _dir(self, strategy: str, partition_id: int) -> Path:
        return self.root / _SAFE.sub("_", strategy) / str(int(partition_id))

    def _read(self, strategy, partition_id, version):
        path = self._dir(strategy, partition_id) / f"{int(version)}.pt"
        return path.read_bytes() if path.exists() else None

    def _write(self, strategy, partition_id, version, data):
        folder = self._dir(strategy, partition_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{int(version)}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / f"{int(version)}.pt")

    def _versions(self, strategy, partition_id):
        folder = self._dir(strategy, partition_id)
        return [int(p.stem) for p in folder.glob("*.pt")] if folder.exists() else []

    def _delete(self, strategy, partition_id, version):
        (self._dir(strategy, partition_id) / f"{int(version)}.pt").unlink(missing_ok=True)


class ContextStore(ClientStateStore):
    """Versions as bytes in Flower's Context.state: one device, one SuperNode, its own state."""

    PREFIX = "client-state"

    def __init__(self, context: Context):
        self.context = context

    def __repr__(self) -> str:
        return "ContextStore(this node's Context)"

    def _key(self, strategy: str) -> str:
        return f"{self.PREFIX}.{strategy}"

    def _record(self, strategy: str) -> ConfigRecord:
        key = self._key(strategy)
        if key not in self.context.state:
            self.context.state[key] = ConfigRecord()
        return self.context.state[key]

    def _read(self, strategy, partition_id, version):
        value = self._record(strategy).get(f"{int(partition_id)}/{int(version)}")
        return None if value is None else bytes(value)

    def _write(self, strategy, partition_id, version, data):
        self._record(strategy)[f"{int(partition_id)}/{int(version)}"] = data

    def _versions(self, strategy, partition_id):
        prefix = f"{int(partition_id)}/"
        return [int(k[len(prefix):]) for k in self._record(strategy) if k.startswith(prefix)]

    def _delete(self, strategy, partition_id, version):
        del self._record(strategy)[f"{int(partition_id)}/{int(version)}"]
