"""Data sets for the simulator: offline loaders, a shared record type and a train/validation splitter."""

from fedlottery.data.datasets import (
    DATASETS,
    DataNotFoundError,
    Dataset,
    load_dataset,
    resolve_data_root,
    train_val_split,
)
from fedlottery.data.partitions import ClientSplit, PartitionConfig, describe, make_partitions

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "load_dataset",
    "resolve_data_root",
    "train_val_split",
    "ClientSplit",
    "PartitionConfig",
    "describe",
    "make_partitions",
]
