"""The centralized lottery-ticket runner: levels of train -> prune -> rewind, with controls and early-bird.

An orchestrator above training.py and sparsity/: it decides what to train from which weights under which
mask, and writes one row per training run to levels.csv the moment that run ends.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fedlottery.config import ImpConfig, to_dict
from fedlottery.data import Dataset, load_dataset, train_val_split
from fedlottery.models import build_model, clone_state, conv_names, output_layer_name, prunable_names
from fedlottery.runs.results import CsvLog, Progress, plot_levels, summarize_levels, write_json
from fedlottery.sparsity import Mask, compound_rates, layer_rates, magnitude_prune, random_mask_like
from fedlottery.supermask import (initial_probabilities, make_scores, score_optimizer, shuffled_batches,
                                  thresholded, train_scores)
from fedlottery.training import Split, TrainResult, evaluate, train

LEVEL_COLUMNS = [
    "level",
    "percent_remaining",
    "variant",
    "seed",
    "test_acc_early_stop",
    "early_stop_iteration",
    "test_acc_final",
    "val_loss_min",
    "iterations",
    "early_bird_epoch",
    "wall_s",
]
VARIANTS = ("ticket", "reinit", "random_mask")
SUPERMASK_STREAM = 1_000  # the supermask run's RNG stream at level 0, apart from every control's


@dataclass
class _Splits:
    train: Split
    val: Split | None
    test: Split


def _splits(dataset: Dataset, val_size: int, seed: int, device: str) -> _Splits:
    train_idx, val_idx = train_val_split(dataset.y_train, val_size, seed)
    move = lambda x, y: (x.to(device), y.to(device))  # noqa: E731
    train = move(dataset.inputs("train", train_idx), dataset.y_train[train_idx])
    val = move(dataset.inputs("train", val_idx), dataset.y_train[val_idx]) if val_size > 0 else None
    return _Splits(train, val, move(dataset.inputs("test"), dataset.y_test))


@dataclass
class _SeedRun:
    """What every run of one seed shares: its splits, its model (trained in place level after level), theta_0,
    and the rows written so far (each also appended to levels.csv and reported to the progress line)."""

    seed: int
    splits: _Splits
    model: nn.Module
    theta0: dict
    log: CsvLog
    progress: Progress
    rows: list[dict] = field(default_factory=list)

    def record(self, level: int, variant: str, run_mask: Mask, result: TrainResult, bird: int | None = None):
        row = {
            "level": level,
            "percent_remaining": round(100 * run_mask.density(), 4),
            "variant": variant,
            "seed": self.seed,
            "test_acc_early_stop": result.test_acc_early_stop,
            "early_stop_iteration": result.early_stop_iteration,
            "test_acc_final": result.test_acc_final,
            "val_loss_min": result.val_loss_min,
            "iterations": result.iterations,
            "early_bird_epoch": bird,
            "wall_s": round(result.wall_s, 3),
        }
        self.log.append(row)
        self.rows.append(row)
        self.progress.step(
            f"seed {self.seed} level {level} {variant:<11} {row['percent_remaining']:6.2f}% left: "
            f"test acc {100 * result.test_acc_early_stop:.2f}% at early stop "
            f"(iter {result.early_stop_iteration}), {100 * result.test_acc_final:.2f}% final"
        )


def _generator(seed: int, *parts: int) -> torch.Generator:
    """An independent, reproducible stream per (seed, level, variant): runs never share RNG state."""
    value = seed
    for part in parts:
        value = value * 1_000_003 + part
    return torch.Generator().manual_seed(value % (2**63))


class EarlyBird:
    """Tracks the mask that pruning would give after each epoch; fires once successive masks stop moving."""

    def __init__(self, prune: Callable[[dict[str, torch.Tensor]], Mask], epsilon: float, patience: int):
        self.prune, self.epsilon, self.patience = prune, epsilon, patience
        self.previous: Mask | None = None
        self.distances: list[float] = []
        self.epoch: int | None = None

    def __call__(self, epoch: int, model: nn.Module) -> bool:
        draft = self.prune(dict(model.named_parameters()))
        if self.previous is not None:
            self.distances.append(self.previous.hamming(draft))
        self.previous = draft
        recent = self.distances[-self.patience :]
        if self.epoch is None and len(recent) == self.patience and max(recent) < self.epsilon:
            self.epoch = epoch
        return self.epoch is not None


class ImpRunner:
    """Runs one IMP experiment (every seed) and writes levels.csv, masks/, summary.json and a plot."""

    def __init__(self, cfg: ImpConfig, out_dir: Path, log: Callable[[str], None] = print):
        self.cfg, self.out_dir, self.log = cfg, Path(out_dir), log
        self.dataset = load_dataset(cfg.data)

    # --- planning -----------------------------------------------------------------------------------------
    def control_levels(self) -> list[int]:
        levels = self.cfg.controls.levels or list(range(1, self.cfg.pruning.levels + 1))
        return [lv for lv in levels if lv <= self.cfg.pruning.levels]

    def planned_runs(self) -> int:
        per_seed = self.cfg.pruning.levels + 1 + len(self.control_levels()) * len(self.cfg.controls.variants)
        per_seed += int(self.cfg.supermask.enabled)
        return per_seed * len(self.cfg.seeds)

    def _fresh_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(
            self.cfg.model.name, self.dataset.input_shape, self.dataset.num_classes, self.cfg.model.init
        ).to(self.cfg.training.device)

    def _rates(self, model: nn.Module) -> dict[str, float]:
        p = self.cfg.pruning
        return layer_rates(
            prunable_names(model),
            p.rate,
            output_name=output_layer_name(model),
            output_rate=p.output_rate,
            conv_names=conv_names(model),
            conv_rate=p.conv_rate,
            overrides=p.layer_rates,
        )

    def _prune(self, mask: Mask, weights: dict[str, torch.Tensor], rates: dict[str, float], steps: int) -> Mask:
        p = self.cfg.pruning
        if p.scope == "global":
            rate: float | dict[str, float] = 1.0 - (1.0 - p.rate) ** steps
        else:
            rate = compound_rates(rates, steps)
        return magnitude_prune(
            mask, weights, rate, scope=p.scope, target_density=p.target_density, overshoot=p.overshoot
        )

    # --- running ------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "masks").mkdir(exist_ok=True)
        log = CsvLog(self.out_dir / "levels.csv", LEVEL_COLUMNS)
        progress = Progress(self.planned_runs(), self.log)
        rows: list[dict] = []
        for seed in self.cfg.seeds:
            rows += self._run_seed(seed, log, progress)
        summary = summarize_levels(rows)
        # float sums split over threads differ in the last bits, and thousands of steps grow that into other
        # numbers: the same seed reproduces at the same thread count, so the count is part of the record
        write_json(self.out_dir / "summary.json", {"config": to_dict(self.cfg), "levels": summary,
                                                   "wall_s": round(progress.elapsed(), 1),
                                                   "torch_threads": torch.get_num_threads()})
        plot_levels(summary, self.out_dir / "accuracy_vs_remaining.png", title=self.cfg.model.name)
        return rows

    def _run_seed(self, seed: int, log: CsvLog, progress: Progress) -> list[dict]:
        """Level 0 (dense, then the supermask run), then every pruning level with its controls, for one seed."""
        cfg = self.cfg
        splits = _splits(self.dataset, cfg.data.val_size, seed, cfg.training.device)
        model = self._fresh_model(seed)
        run = _SeedRun(seed, splits, model, clone_state(model), log, progress)
        params = dict(model.named_parameters())
        names = prunable_names(model)
        rates = self._rates(model)
        mask = Mask.ones_like({n: params[n] for n in names})

        rewind_state = self._train_dense(run, mask, rates)
        dense_mask, dense_trained = mask, clone_state(model)
        if cfg.supermask.enabled:
            kept, result = self._train_supermask(seed, run.theta0, splits)
            kept.save(self.out_dir / "masks" / f"seed{seed}_supermask.npz")
            run.record(0, "supermask", kept, result)
        trained = dense_trained

        for level in range(1, cfg.pruning.levels + 1):
            if cfg.pruning.style == "iterative":
                new_mask = self._prune(mask, {n: trained[n] for n in names}, rates, 1)
            else:
                new_mask = self._prune(dense_mask, {n: dense_trained[n] for n in names}, rates, level)
            if new_mask == mask:
                self.log(f"seed {seed}: target density reached at level {level - 1}; stopping")
                break
            mask = new_mask
            mask.save(self.out_dir / "masks" / f"seed{seed}_level{level}.npz")
            start_state, lr = self._start_state(run.theta0, rewind_state, trained, dense_trained)
            model.load_state_dict(start_state)
            result, bird = self._train_ticket(model, mask, splits, _generator(seed, level, 0), rates, lr=lr)
            run.record(level, "ticket", mask, result, bird)
            trained = clone_state(model)
            if level in self.control_levels():
                self._train_controls(run, level, mask, start_state, lr)
        return run.rows

    def _train_dense(self, run: _SeedRun, mask: Mask, rates: dict[str, float]) -> dict:
        """Level 0: train the dense network and record it; returns the state later levels rewind to
        (theta_0, or theta_k captured on the way when rewinding late to iteration k)."""
        p = self.cfg.pruning
        snapshots: dict[str, dict] = {}
        on_iteration = None
        late_rewind = p.rewind == "iteration" and p.rewind_iteration > 0
        if late_rewind:
            k = p.rewind_iteration

            def on_iteration(step: int, m: nn.Module) -> None:
                if step == k:
                    snapshots["theta_k"] = clone_state(m)

        gen = _generator(run.seed, 0, 0)
        result, bird = self._train_ticket(run.model, mask, run.splits, gen, rates, on_iteration)
        rewind_state = snapshots["theta_k"] if late_rewind else run.theta0
        run.record(0, "ticket", mask, result, bird)
        mask.save(self.out_dir / "masks" / f"seed{run.seed}_level0.npz")
        return rewind_state

    def _train_controls(self, run: _SeedRun, level: int, mask: Mask, start_state: dict, lr: float | None) -> None:
        """The control runs at one level: `reinit` (the ticket's mask over fresh weights) and `random_mask`
        (the ticket's start weights under a random mask of the same per-layer density)."""
        cfg = self.cfg
        for v_index, variant in enumerate(cfg.controls.variants, start=1):
            gen = _generator(run.seed, level, v_index)
            if variant == "reinit":
                control = self._fresh_model(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                control_mask = mask
            else:
                control = copy.deepcopy(run.model)
                control.load_state_dict(start_state)
                control_mask = random_mask_like(mask, gen)
            res = train(
                control, run.splits.train, cfg.training, gen, mask=control_mask,
                val_data=run.splits.val, test_data=run.splits.test, lr=lr,
            )
            run.record(level, variant, control_mask, res)

    def _start_state(self, theta0, rewind_state, trained, dense_trained) -> tuple[dict, float | None]:
        """Weights the survivors start from at a new level, and the LR to train with (None: cfg's)."""
        p = self.cfg.pruning
        previous = trained if p.style == "iterative" else dense_trained
        if p.rewind == "init":
            return theta0, None
        if p.rewind == "iteration":
            return rewind_state, None
        if p.rewind == "lr":
            return previous, None  # keep the weights, restart the LR schedule from the start
        return previous, p.finetune_lr

    def _train_supermask(self, seed: int, theta0: dict, splits: _Splits) -> tuple[Mask, TrainResult]:
        """The supermask run: scores over theta_0's frozen weights, early-stopped on validation loss of the
        thresholded mask (sigmoid(s) > 0.5); returns that mask at the early-stopping point and the result."""
        cfg, sm = self.cfg.training, self.cfg.supermask
        gen = _generator(seed, 0, SUPERMASK_STREAM)
        model = self._fresh_model(seed)
        model.load_state_dict(theta0)
        names = prunable_names(model)
        start = initial_probabilities({n: theta0[n].shape for n in names}, sm.init, gen)
        scores = make_scores({n: p.to(cfg.device) for n, p in start.items()}, clip=0.01)
        optimizer = score_optimizer(scores, sm.optimizer, sm.lr, cfg.momentum)
        result, best = TrainResult(iterations=cfg.iterations, wall_s=0.0), {}
        clock = time.perf_counter()

        def validate(step: int) -> None:
            if splits.val is None or (step % cfg.eval_every and step != cfg.iterations):
                return
            kept, frozen = thresholded(model, theta0, scores)
            val_loss, val_acc = evaluate(frozen, splits.val)
            result.evals.append({"iteration": step, "val_loss": val_loss, "val_acc": val_acc})
            if result.val_loss_min is None or val_loss < result.val_loss_min:
                result.val_loss_min, result.early_stop_iteration = val_loss, step
                best.update(kept=kept, acc=evaluate(frozen, splits.test)[1])

        batches = shuffled_batches(splits.train, cfg.batch_size, gen, steps=cfg.iterations)
        train_scores(model, {n: theta0[n].detach() for n in names}, scores, optimizer, batches, gen, sm.ste,
                     on_step=validate)
        kept, frozen = thresholded(model, theta0, scores)
        result.test_acc_final = evaluate(frozen, splits.test)[1]
        if not best:  # no validation split: the final mask is the early-stopping one
            best.update(kept=kept, acc=result.test_acc_final)
            result.early_stop_iteration = cfg.iterations
        result.test_acc_early_stop, result.wall_s = best["acc"], time.perf_counter() - clock
        return best["kept"], result

    def _train_ticket(self, model, mask, splits, gen, rates, on_iteration=None, lr=None):
        """Train the ticket at one level, with early-bird detection on the mask the next level would get."""
        eb = self.cfg.early_bird
        bird = None
        if eb.enabled:
            names = mask.names()
            bird = EarlyBird(lambda params: self._prune(mask, {n: params[n] for n in names}, rates, 1),
                             eb.epsilon, eb.patience)
        on_epoch = None
        if bird is not None:
            on_epoch = (lambda epoch, m: bird(epoch, m) and eb.stop)
        result = train(
            model, splits.train, self.cfg.training, gen, mask=mask, val_data=splits.val,
            test_data=splits.test, lr=lr, on_iteration=on_iteration, on_epoch=on_epoch,
        )
        return result, (bird.epoch if bird is not None else None)
