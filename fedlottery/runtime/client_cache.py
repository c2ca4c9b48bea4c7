"""What both client paths (fedlottery's own messages and stock Flower ones) rebuild once per process and share.

A Ray actor lives for the whole run and hosts many clients in turn: the experiment config, the data set and
its partitions, theta_0 and the shared test set are built on first use and cached here, keyed by the
experiment's JSON, so no client pays for them twice and nothing big travels in a message.
"""
from __future__ import annotations

import functools
import json
import os

import torch

from fedlottery.config import FederatedConfig
from fedlottery.data import load_dataset, make_partitions
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names
from fedlottery.runtime.experiment import experiment_from_dict
from fedlottery.runtime.shared_evaluation import worth_sharing
from strategies import StrategySpec, spec_for
from strategies.base import ClientData


@functools.lru_cache(maxsize=4)
def experiment(config_json: str) -> FederatedConfig:
    threads_as_ray_assigned()  # first use in an actor: before any client trains
    return experiment_from_dict(json.loads(config_json))  # every check, strategies included


def threads_as_ray_assigned() -> None:
    """torch's thread count as Ray gave this actor (OMP_NUM_THREADS, set as the actor starts). A private Ray's
    workers import torch before that (fedlottery.runtime.ray_runtime preloads it), when torch would take one
    thread per core: with several actors on the cores, their threads would fight for them."""
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0 and torch.get_num_threads() != int(wanted):
        torch.set_num_threads(int(wanted))


@functools.lru_cache(maxsize=4)
def partitions(config_json: str):
    cfg = experiment(config_json)
    dataset = load_dataset(cfg.data)
    return dataset, make_partitions(dataset, cfg.partition, cfg.seed)


@functools.lru_cache(maxsize=4)
def initial_state(config_json: str) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """theta_0, the prunable names and the BatchNorm names: the same seeded draw the server makes, so
    theta_0 is never sent."""
    cfg = experiment(config_json)
    dataset, _ = partitions(config_json)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init)
    return clone_state(model), prunable_names(model), batchnorm_names(model)


@functools.lru_cache(maxsize=4)
def model_head(config_json: str) -> list[str]:
    """The model's head tensors (fedlottery.models.head_names): personal for a `keeps_head` strategy."""
    cfg = experiment(config_json)
    dataset, _ = partitions(config_json)
    return head_names(build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, cfg.model.init))


def device_for(cfg: FederatedConfig) -> torch.device:
    """Where this client's model, data and theta_0 go: `simulation.device`, with 'auto' = cuda when Ray gave the
    actor a GPU (num_gpus > 0), else cpu. Ray shows an actor only the GPUs it assigned it (CUDA_VISIBLE_DEVICES),
    numbered from cuda:0. A GPU asked for but not visible here is an error, never a silent fall-back to the CPU."""
    sim = cfg.simulation
    if sim.device == "cpu" or (sim.device == "auto" and sim.num_gpus == 0):
        return torch.device("cpu")
    wanted = torch.device("cuda" if sim.device == "auto" else sim.device)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (wanted.index or 0) >= visible:
        raise RuntimeError(
            f"simulation.device {sim.device!r} with simulation.num_gpus {sim.num_gpus:g}, but this client process "
            f"sees {visible} CUDA GPU(s) (torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); Ray numbers an actor's GPUs from cuda:0, and every node "
            "that can host a GPU client needs a CUDA build of torch")
    return wanted


def client_data(config_json: str, partition_id: int, device: torch.device) -> ClientData:
    dataset, splits = partitions(config_json)
    if not 0 <= partition_id < len(splits):
        raise ValueError(f"partition-id {partition_id} outside the {len(splits)} partitions of this experiment")
    split = splits[partition_id]

    def pick(part: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dataset.inputs(part, idx).to(device), getattr(dataset, f"y_{part}")[idx].to(device)

    return ClientData(
        partition_id,
        pick("train", split.train),
        pick("train", split.val),
        lambda: pick("test", split.test),  # built when first read: training never does
    )


@functools.lru_cache(maxsize=4)
def shared_test_set(config_json: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The whole test set on `device` when the clients' test sets overlap enough that a model many clients
    share is best scored once on all of it (fedlottery.runtime.shared_evaluation); else None."""
    dataset, splits = partitions(config_json)
    if not worth_sharing([int(s.test.numel()) for s in splits], len(dataset.y_test)):
        return None
    return dataset.inputs("test").to(device), dataset.y_test.to(device)


@functools.lru_cache(maxsize=64)
def strategy_spec(config_json: str, label: str) -> StrategySpec:
    """The config entry a message's label names (strategy, typed options, comm), resolved once per process: the
    whole strategies list is built and checked to find it, which no client should redo for every message."""
    return spec_for(experiment(config_json), label)
