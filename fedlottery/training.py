"""Masked training and evaluation loops over in-memory tensors.

Data sets here fit in memory, so batches are sliced from one tensor with a seeded permutation per epoch:
no DataLoader workers, identical batches for the same generator state, and almost no per-step overhead.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedlottery.config import TrainingConfig
from fedlottery.sparsity import Mask, MaskedParameters

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainResult:
    """What one training run did; `test_acc_early_stop` is measured at the iteration of min validation loss."""

    iterations: int
    wall_s: float
    evals: list[dict] = field(default_factory=list)  # {"iteration", "val_loss", "val_acc"} every eval_every
    early_stop_iteration: int | None = None
    val_loss_min: float | None = None
    test_acc_early_stop: float | None = None
    test_acc_final: float | None = None
    stopped_early_by_callback: bool = False


def make_optimizer(model: nn.Module, cfg: TrainingConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam or SGD; the fused kernels (one pass over all tensors, ~20% faster steps on CPU) when available."""
    lr = cfg.lr if lr is None else lr
    fused = all(p.dtype.is_floating_point for p in model.parameters())
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    x, y = data
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def _proximal_anchors(model: nn.Module, reference: dict[str, torch.Tensor] | None
                      ) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, fixed reference copy) for every trainable parameter: FedProx's w_ref."""
    reference = reference or {}
    return [(p, (reference[name] if name in reference else p).detach().to(p.device, p.dtype).clone())
            for name, p in model.named_parameters() if p.requires_grad]


def train(
    model: nn.Module,
    train_data: Split,
    cfg: TrainingConfig,
    generator: torch.Generator,
    *,
    mask: Mask | None = None,
    val_data: Split | None = None,
    test_data: Split | None = None,
    lr: float | None = None,
    iterations: int | None = None,
    epochs: int | None = None,
    on_iteration: Callable[[int, nn.Module], None] | None = None,
    on_epoch: Callable[[int, nn.Module], bool] | None = None,
    proximal_mu: float | None = None,
    reference: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` in place for `iterations` steps (default cfg.iterations) or whole `epochs`.

    With a mask, pruned weights stay exactly zero (see MaskedParameters). Validation is checked every
    cfg.eval_every steps; the weights at the minimum validation loss are kept aside so test accuracy at
    the early-stopping point is measured once, at the end. `on_iteration(step, model)` runs after each
    step (e.g. to snapshot theta_k for late rewinding); `on_epoch(epoch, model)` after each epoch, and
    returning True ends training there (early-bird). `proximal_mu` > 0 adds FedProx's proximal term
    (mu/2)·||w − w_ref||² over the trainable parameters to every step's loss, with w_ref the `reference`
    tensors by parameter name (default: the parameters as training starts, i.e. the weights received);
    None or 0 leaves the loop exactly as without it.
    """
    x, y = train_data
    n = len(y)
    if n == 0:
        raise ValueError("cannot train on an empty data set")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = epochs * steps_per_epoch if epochs is not None else (iterations or cfg.iterations)
    optimizer = make_optimizer(model, cfg, lr)
    scheduler = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    masked = MaskedParameters(model, mask) if mask is not None else None
    anchors = _proximal_anchors(model, reference) if proximal_mu else None
    result = TrainResult(iterations=0, wall_s=0.0)
    best_state: dict | None = None
    start_time = time.perf_counter()
    model.train()
    step, epoch = 0, 0
    while step < total:
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if anchors is not None:
                loss = loss + (proximal_mu / 2) * sum((p - ref).pow(2).sum() for p, ref in anchors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if masked is not None:
                masked.mask_grads()
            optimizer.step()
            if masked is not None:
                masked.apply()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if on_iteration is not None:
                on_iteration(step, model)
            if val_data is not None and (step % cfg.eval_every == 0 or step == total):
                val_loss, val_acc = evaluate(model, val_data)
                result.evals.append({"iteration": step, "val_loss": val_loss, "val_acc": val_acc})
                if result.val_loss_min is None or val_loss < result.val_loss_min:
                    result.val_loss_min, result.early_stop_iteration = val_loss, step
                    if test_data is not None:
                        best_state = copy.deepcopy(model.state_dict())
            if step >= total:
                break
        epoch += 1
        if on_epoch is not None and step < total and on_epoch(epoch, model):
            result.stopped_early_by_callback = True
            break
    result.iterations = step
    if test_data is not None:
        result.test_acc_final = evaluate(model, test_data)[1]
        if best_state is not None:
            final_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(best_state)
            result.test_acc_early_stop = evaluate(model, test_data)[1]
            model.load_state_dict(final_state)
        else:
            result.test_acc_early_stop = result.test_acc_final
            result.early_stop_iteration = step
    result.wall_s = time.perf_counter() - start_time
    return result
