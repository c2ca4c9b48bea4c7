"""Data sets for the simulator: offline loaders, a shared record type and a train/validation splitter."""

from fedlottery.config import PartitionConfig
from fedlottery.data.datasets import (
    DATASETS,
    DataCorruptError,
    DataNotFoundError,
    Dataset,
    check_data_config,
    load_dataset,
    resolve_data_root,
    train_val_split,
)
from fedlottery.data.partitions import ClientSplit, describe, make_partitions
from fedlottery.data.record import PixelScale

__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "Dataset",
    "PixelScale",
    "check_data_config",
    "load_dataset",
    "resolve_data_root",
    "train_val_split",
    "ClientSplit",
    "PartitionConfig",
    "describe",
    "make_partitions",
]
