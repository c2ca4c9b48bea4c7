"""Live experiment tracking: every rounds.csv metric as a TensorBoard scalar while the run goes on.

Why: researchers watch long runs and compare them side by side in TensorBoard (as in FL-bench and
pfl-research); rounds.csv and `fedlottery report` stay the offline source of truth. One event-file folder per
strategy and seed (`<dir>/<strategy>/seed<S>`), one scalar per numeric column, the round as the step.
On `--resume`, events at or after the first round to redo are purged (TensorBoard's `purge_step`), so a
resumed run shows each round once.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from fedlottery.errors import ConfigError

NOT_SCALARS = frozenset({"round", "strategy", "seed", "sampled"})


class Tracker:
    """Writes rows to TensorBoard; a no-op when no directory is configured."""

    def __init__(self, directory: str | None, seed: int):
        self.directory = Path(directory).expanduser() if directory else None
        self.seed = seed
        self._writers: dict[str, Any] = {}
        if self.directory is not None:
            _summary_writer()  # fail now, before any round, when TensorBoard is not installed

    def log(self, row: dict) -> None:
        """One round's row: every numeric value but the identifiers, at step = round."""
        if self.directory is None:
            return
        writer = self._writer(str(row["strategy"]), int(row["round"]))
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                writer.add_scalar(key, float(value), int(row["round"]))
        writer.flush()

    def _writer(self, strategy: str, first_round: int):
        if strategy not in self._writers:
            folder = self.directory / strategy / f"seed{self.seed}"
            self._writers[strategy] = _summary_writer()(str(folder), purge_step=first_round)
        return self._writers[strategy]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tracking.tensorboard: writing TensorBoard events needs the tensorboard package; "
                          "install it (pip install 'fedlottery[tracking]') or remove tracking.tensorboard") from None
    return SummaryWriter
