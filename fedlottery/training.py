"""Masked training and evaluation loops over in-memory tensors.

Data sets here fit in memory, so batches are sliced from one tensor with a seeded permutation per epoch:
no DataLoader workers, identical batches for the same generator state, and almost no per-step overhead.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable

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
    """Adam or SGD over the trainable parameters; the fused kernels (one pass over all tensors, ~20% faster
    steps on CPU) when available."""
    lr = cfg.lr if lr is None else lr
    fused = all(p.dtype.is_floating_point for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones: not even weight decay moves them
    if not params:
        raise ValueError(f"every parameter of {type(model).__name__} is frozen (requires_grad=False): nothing "
                         "to train; unfreeze some, or skip training")
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


# Evaluation. `evaluate` / `evaluate_many` are the fast paths: inference mode, a cache-sized default batch and
# channels_last convolutions on CPU (~2x the throughput of the old batch-2000 NCHW loop on LotteryFL's CNN,
# benchmarks/results/eval_floor.md). Accuracy is the same as the old loop's (the logits differ by float
# rounding only, ~1e-6; argmax ties aside); the loss agrees to float tolerance. `train` keeps the old loop,
# `_evaluate_reference`, so its validation-loss trace and early-stopping point stay bit-identical.

CPU_CACHE_BYTES = 4 << 20  # activation bytes a CPU batch should stay within (L2/L3-sized; measured best)
CPU_MLP_BATCH = 512  # models without convolutions: GEMM throughput is flat from ~256 up
ACCELERATOR_BATCH = 2000  # CUDA etc.: big batches amortise launches (the old default; not re-measured)


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else x.device


def default_batch_size(model: nn.Module, x: torch.Tensor) -> int:
    """Evaluation batch size for `model` on inputs like `x` (N, C, H, W) or (N, features).

    On CPU a conv model is fastest when its largest activation (~ the first conv's output) stays in cache:
    4 MiB / (out_channels * H * W * 4 bytes) rounded down to a power of two in [64, 512] -- 128 for LotteryFL's
    CNN on MNIST (measured best 64-160; 2000, the old default, is ~1.5x slower), 512 for the 8x8 digits CNN,
    64 for Conv-4 / ResNet-20 on 32x32. Models without convolutions: 512. Other devices: 2000.
    """
    if _device_of(model, x).type != "cpu":
        return ACCELERATOR_BATCH
    conv = _first_conv(model)
    if conv is None or x.dim() != 4:
        return CPU_MLP_BATCH
    per_sample = conv.out_channels * x.shape[2] * x.shape[3] * x.element_size()
    batch = 1 << max(0, (CPU_CACHE_BYTES // max(per_sample, 1)).bit_length() - 1)
    return min(max(batch, 64), 512)


def _wants_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """channels_last pays on CPU for every conv model here (1.3-2.5x, LotteryFL's CNN ~2x); elsewhere unmeasured."""
    return x.dim() == 4 and _first_conv(model) is not None and _device_of(model, x).type == "cpu"


def _conv_weights_to_channels_last(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Give every 4-d conv weight channels_last storage by swapping `.data` (the Parameter objects stay, so the
    optimizers, masks and hooks holding them are untouched); returns (weight, its former tensor) per swap."""
    swapped = []
    for module in model.modules():
        weight = module.weight if isinstance(module, nn.Conv2d) else None
        if weight is None or weight.dim() != 4:
            continue
        # .to (not .contiguous): a 1-channel weight counts as channels_last-contiguous in either
        # layout, but only the explicit NHWC strides make its convolution emit NHWC.
        converted = weight.data.to(memory_format=torch.channels_last)
        if converted.stride() != weight.stride():
            swapped.append((weight, weight.data))
            weight.data = converted
    return swapped


@contextmanager
def _training_layout(model: nn.Module, x: torch.Tensor, memory_format: str):
    """For `local.memory_format: channels_last`: conv weights in channels_last for one training run (the
    optimizer, built inside, then keeps its momentum in the same layout), and afterwards back in the standard
    layout with the trained values, so that state dicts, payloads and masks never see NHWC strides. Yields
    whether each batch is to be converted too. Float rounding differs from the standard layout (a run in one
    is a different experiment from a run in the other); measured 0.75x the CPU per epoch for LotteryFL's CNNs,
    1.04x for LeNet-5-BN (benchmarks/results/training_memory_format.md)."""
    if memory_format != "channels_last" or not _wants_channels_last(model, x):
        yield False
        return
    swapped = _conv_weights_to_channels_last(model)
    try:
        yield True
    finally:
        for weight, _ in swapped:
            weight.data = weight.data.contiguous()


@contextmanager
def _evaluation_state(models: list[nn.Module], channels_last: list[bool]):
    """Eval mode, and channels_last conv weights where asked, for the duration; then exactly as before.

    Every module's own training flag is restored (not one flag for the whole tree), and conv weights get their
    original tensors back (`.data` is swapped, so Parameter objects -- and the optimizers, masks and hooks
    holding them -- are never replaced, and nothing is copied back). ~30 us per call on LotteryFL's CNN.
    """
    modules = [m for model in models for m in model.modules()]
    modes = [m.training for m in modules]
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for model, to_cl in zip(models, channels_last):
            model.eval()
            if to_cl:
                swapped += _conv_weights_to_channels_last(model)
        yield
    finally:
        for weight, original in reversed(swapped):
            weight.data = original
        for module, training in zip(modules, modes):
            if module.training != training:
                object.__setattr__(module, "training", training)  # what Module.train does, one module only


def evaluate_many(
    models: list[nn.Module], data: Split, batch_size: int | None = None, *, channels_last: bool | None = None
) -> list[tuple[float, float]]:
    """(mean cross-entropy, accuracy) of each model on the same (x, y), in one pass over the batches.

    Each batch is sliced (and converted to channels_last) once and fed to every model: a client's personal
    and deployed models cost two forward passes and one pass over the data. `batch_size=None` picks
    `default_batch_size` (the smallest over the models); `channels_last=None` uses it where it pays (conv
    models on CPU with 4-D inputs), True / False force it. Models are left in their own training mode and
    memory format. Empty data: (nan, nan) for each model.
    """
    models = list(models)
    x, y = data
    n = len(y)
    if n == 0 or not models:
        return [(float("nan"), float("nan"))] * len(models)
    unique = list({id(m): m for m in models}.values())
    to_cl = [_wants_channels_last(m, x) if channels_last is None else bool(channels_last and x.dim() == 4)
             for m in unique]
    if batch_size is None:
        batch_size = min(default_batch_size(m, x) for m in unique)
    loss_sums: list[torch.Tensor | float] = [0.0] * len(unique)
    corrects: list[torch.Tensor | int] = [0] * len(unique)
    with _evaluation_state(unique, to_cl), torch.inference_mode():
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            xb_cl = xb.contiguous(memory_format=torch.channels_last) if any(to_cl) else xb
            for i, model in enumerate(unique):
                logits = model(xb_cl if to_cl[i] else xb)
                loss_sums[i] += F.cross_entropy(logits, yb, reduction="none").sum(dtype=torch.float64)
                corrects[i] += (logits.argmax(1) == yb).sum()
    results = {id(m): (float(loss_sums[i]) / n, int(corrects[i]) / n) for i, m in enumerate(unique)}
    return [results[id(m)] for m in models]


def evaluate_per_example(model: nn.Module, data: Split, batch_size: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's cross-entropy (float64) and whether it was classified right (bool), under the same
    evaluation state as `evaluate_many` (eval mode, inference_mode, channels_last where it pays): the mean of
    a subset of them is that subset's `evaluate`, up to the order of a float64 sum."""
    x, y = data
    if batch_size is None:
        batch_size = default_batch_size(model, x)
    to_cl = _wants_channels_last(model, x)
    losses, hits = [], []
    with _evaluation_state([model], [to_cl]), torch.inference_mode():
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb.contiguous(memory_format=torch.channels_last) if to_cl else xb)
            losses.append(F.cross_entropy(logits, yb, reduction="none").double())
            hits.append(logits.argmax(1) == yb)
    if not losses:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(hits)


def evaluate(
    model: nn.Module, data: Split, batch_size: int | None = None, *, channels_last: bool | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y); (nan, nan) on empty data. See `evaluate_many`."""
    return evaluate_many([model], data, batch_size, channels_last=channels_last)[0]


@torch.inference_mode()
def _evaluate_reference(model: nn.Module, data: Split, batch_size: int = 2000) -> tuple[float, float]:
    """The original loop (NCHW, batch 2000, per-batch float32 loss sums): `train` uses it so its validation
    losses, early-stopping point and test accuracies stay bit-identical to earlier releases."""
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


def warm_up() -> float:
    """Pay a worker process's one-off optimizer start-up now; returns the seconds it took.

    Constructing any torch optimizer the first time imports torch._dynamo (`add_param_group` is wrapped in
    torch._disable_dynamo): ~1 s on an idle core, 12-34 s per Ray actor in a loaded round 1. Call this once
    when a worker starts (e.g. at client-app import in a Ray actor): it builds fused SGD and Adam on a
    1-element parameter and steps each once. Idempotent and cheap (~ms) once the import is done.
    """
    start = time.perf_counter()
    param = nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    for optimizer in (torch.optim.SGD([param], lr=0.0, momentum=0.9, fused=True),
                      torch.optim.Adam([param], lr=0.0, fused=True)):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


LossTerm = Callable[[nn.Module], torch.Tensor]


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor] | None = None, mu: float = 0.0) -> LossTerm:
    """The loss term (mu/2)·||w − w_ref||² over `model`'s trainable parameters, for `train(extra_loss=...)`.

    FedProx adds it with w_ref = the weights received (`reference=None`: the parameters as they are now, copied
    now, so call this before training); Ditto adds it to the personal model with w_ref = the global model.
    `reference` maps parameter names to tensors; a trainable parameter it lacks is anchored at its current
    value. The copies are taken here, so later changes to `reference` or `model` do not move the anchor.
    """
    reference = reference or {}
    anchors = [(p, (reference[name] if name in reference else p).detach().to(p.device, p.dtype).clone())
               for name, p in model.named_parameters() if p.requires_grad]

    def term(_: nn.Module) -> torch.Tensor:
        return (mu / 2) * sum((p - ref).pow(2).sum() for p, ref in anchors)

    return term


@contextmanager
def frozen(model: nn.Module, names: Iterable[str]):
    """Parameters `names` of `model` take no gradient (so no optimizer step, weight decay or momentum moves
    them) for the duration; every parameter's own requires_grad flag is restored afterwards. FedRep trains the
    head with the body frozen and then the body with the head frozen; FedBABU never trains its head."""
    params = dict(model.named_parameters())
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise KeyError(f"cannot freeze {', '.join(unknown)}: {type(model).__name__} has no such parameters")
    chosen = [params[n] for n in names]
    flags = [p.requires_grad for p in chosen]
    try:
        for p in chosen:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(chosen, flags):
            p.requires_grad_(flag)


@dataclass
class _Loop:
    """What one `train` call steps with (built once by `_start`), and where it stands."""

    model: nn.Module
    cfg: TrainingConfig
    total: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    masked: MaskedParameters | None
    extra_loss: LossTerm | None
    result: TrainResult
    step: int = 0
    best_state: dict | None = None
    channels_last: bool = False  # convert each batch (the model's conv weights already are: _training_layout)


def _start(model: nn.Module, n: int, cfg: TrainingConfig, mask: Mask | None, lr: float | None,
           iterations: int | None, epochs: int | None, extra_loss: LossTerm | None) -> _Loop:
    """The optimizer, the optional cosine schedule and the mask, for `total` steps (whole epochs or iterations)."""
    if n == 0:
        raise ValueError("cannot train on an empty data set")
    total = epochs * math.ceil(n / cfg.batch_size) if epochs is not None else (iterations or cfg.iterations)
    optimizer = make_optimizer(model, cfg, lr)
    scheduler = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    masked = MaskedParameters(model, mask) if mask is not None else None
    return _Loop(model, cfg, total, optimizer, scheduler, masked, extra_loss, TrainResult(iterations=0, wall_s=0.0))


def _masked_step(loop: _Loop, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """One optimizer step on one batch: the loss (plus any extra term), gradients masked, pruned weights kept
    exactly zero after the step."""
    loss = F.cross_entropy(loop.model(xb), yb)
    if loop.extra_loss is not None:
        loss = loss + loop.extra_loss(loop.model)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if loop.masked is not None:
        loop.masked.mask_grads()
    loop.optimizer.step()
    if loop.masked is not None:
        loop.masked.apply()
    if loop.scheduler is not None:
        loop.scheduler.step()
    loop.step += 1


def _validate(loop: _Loop, val_data: Split, keep_best: bool) -> None:
    """Record the validation loss; remember the weights at its minimum (for early-stop test accuracy)."""
    val_loss, val_acc = _evaluate_reference(loop.model, val_data)
    result = loop.result
    result.evals.append({"iteration": loop.step, "val_loss": val_loss, "val_acc": val_acc})
    if result.val_loss_min is None or val_loss < result.val_loss_min:
        result.val_loss_min, result.early_stop_iteration = val_loss, loop.step
        if keep_best:
            loop.best_state = copy.deepcopy(loop.model.state_dict())


def _one_epoch(loop: _Loop, train_data: Split, generator: torch.Generator, val_data: Split | None,
               test_data: Split | None, on_iteration: Callable[[int, nn.Module], None] | None) -> None:
    """One pass over a fresh seeded permutation of the data (or fewer steps, if `total` comes first)."""
    x, y = train_data
    n, batch = len(y), loop.cfg.batch_size
    order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        xb = x[idx].contiguous(memory_format=torch.channels_last) if loop.channels_last else x[idx]
        _masked_step(loop, xb, y[idx])
        if on_iteration is not None:
            on_iteration(loop.step, loop.model)
        if val_data is not None and (loop.step % loop.cfg.eval_every == 0 or loop.step == loop.total):
            _validate(loop, val_data, keep_best=test_data is not None)
        if loop.step >= loop.total:
            return


def _test_accuracies(loop: _Loop, test_data: Split) -> None:
    """Test accuracy of the final weights, and of the weights at the validation minimum (restored after)."""
    model, result = loop.model, loop.result
    result.test_acc_final = _evaluate_reference(model, test_data)[1]
    if loop.best_state is None:
        result.test_acc_early_stop = result.test_acc_final
        result.early_stop_iteration = loop.step
        return
    final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(loop.best_state)
    result.test_acc_early_stop = _evaluate_reference(model, test_data)[1]
    model.load_state_dict(final_state)


def _run_epochs(loop: _Loop, train_data: Split, generator: torch.Generator, val_data: Split | None,
                test_data: Split | None, on_iteration, on_epoch) -> None:
    """Whole epochs until `total` steps, or until `on_epoch` says stop (early-bird)."""
    loop.model.train()
    epoch = 0
    while loop.step < loop.total:
        _one_epoch(loop, train_data, generator, val_data, test_data, on_iteration)
        epoch += 1
        if on_epoch is not None and loop.step < loop.total and on_epoch(epoch, loop.model):
            loop.result.stopped_early_by_callback = True
            return


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
    extra_loss: LossTerm | None = None,
) -> TrainResult:
    """Train `model` in place for `iterations` steps (default cfg.iterations) or whole `epochs`.

    With a mask, pruned weights stay exactly zero (see MaskedParameters). Validation is checked every
    cfg.eval_every steps; the weights at the minimum validation loss are kept aside so test accuracy at
    the early-stopping point is measured once, at the end. `on_iteration(step, model)` runs after each
    step (e.g. to snapshot theta_k for late rewinding); `on_epoch(epoch, model)` after each epoch, and
    returning True ends training there (early-bird). `extra_loss(model)` is added to every batch's loss
    (FedProx's and Ditto's pull towards a reference: `proximal_term`); None leaves the loop exactly as
    without it. Only parameters with requires_grad are optimised (see `frozen`).
    """
    with _training_layout(model, train_data[0], cfg.memory_format) as channels_last:
        loop = _start(model, len(train_data[1]), cfg, mask, lr, iterations, epochs, extra_loss)
        loop.channels_last = channels_last
        start_time = time.perf_counter()
        _run_epochs(loop, train_data, generator, val_data, test_data, on_iteration, on_epoch)
    loop.result.iterations = loop.step
    if test_data is not None:
        _test_accuracies(loop, test_data)
    loop.result.wall_s = time.perf_counter() - start_time
    return loop.result
