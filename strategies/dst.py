"""Dynamic sparse training pieces shared by FedDST, FedSpa and DisPFL (ALGORITHMS.md section 9).

All three keep a mask at a fixed density and, now and then, drop the smallest-|w| kept weights of each layer and
regrow as many elsewhere, by the largest |gradient| (RigL's rule) or at random; they differ in who does it,
when, and how the server combines the results. The tensor-only parts (layer budgets, drop-and-regrow) live in
fedlottery.sparsity; this module adds what needs a model: the dense gradient that scores the regrowth.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedlottery.errors import ConfigError
from fedlottery.sparsity import Mask, drop_and_regrow, layer_counts, random_mask_with_counts
from fedlottery.training import Split
from strategies.base import DENSITY_SLACK, FederatedStrategy

Regrow = Literal["gradient", "random"]


def cosine_rate(alpha: float, t: int, t_end: int) -> float:
    """alpha * (1 + cos(pi * t / t_end)) / 2, and 0 from t_end on (the annealed drop rate of all three)."""
    if t >= t_end:
        return 0.0
    return alpha * (1 + math.cos(math.pi * t / t_end)) / 2


def horizon(t_end: int | None, rounds: int, fraction: float, strategy: str) -> int:
    """The round the cosine schedule reaches 0: the option when set, else `fraction` of the run's rounds."""
    if t_end is not None:
        return t_end
    if rounds <= 0:
        raise ConfigError(f"strategy_options.{strategy}.t_end: the run's total rounds are unknown here (ServerSetup"
                          f".rounds is 0), so the annealing schedule has no end; set t_end explicitly")
    return max(1, math.floor(rounds * fraction))


def random_client_mask(shapes: dict[str, torch.Size], density: float, distribution: str, seed: int,
                       partition_id: int, strategy: str) -> Mask:
    """A client's random starting mask at `density` (ERK or uniform layer budgets), from a stream seeded by
    (seed, partition, strategy) alone, so server and client draw the same one and nothing is sent for it."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{partition_id}/{strategy}/mask".encode()))
    return random_mask_with_counts(shapes, layer_counts(shapes, density, distribution), generator)


def gradients(model: nn.Module, data: Split, batch_size: int, batches: int, names: list[str],
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The dense gradient of the loss at the current (masked) weights over `batches` random batches: it scores
    pruned positions too, which is what gradient regrowth ranks."""
    x, y = data
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    model.train()
    order = torch.randperm(len(y), generator=generator).to(x.device)
    for i in range(batches):
        idx = order[i * batch_size:(i + 1) * batch_size]
        if len(idx) == 0:
            break
        F.cross_entropy(model(x[idx]), y[idx]).backward()
    out = {n: params[n].grad.detach().clone() if params[n].grad is not None else torch.zeros_like(params[n])
           for n in names}
    model.zero_grad(set_to_none=True)
    return out


def readjust(model: nn.Module, mask: Mask, data: Split, batch_size: int, rate: float, regrow: Regrow,
             generator: torch.Generator, batches: int = 1) -> Mask:
    """One drop-and-regrow step on a live model: drop `rate` of each layer's kept weights by magnitude, regrow
    as many by |gradient| (or at random); regrown weights start at zero. Returns the new mask."""
    if rate <= 0:
        return mask.copy()
    params = dict(model.named_parameters())
    weights = {n: params[n].detach() for n in mask}
    if regrow == "gradient":
        scores = gradients(model, data, batch_size, batches, mask.names(), generator)
    else:
        scores = {n: torch.rand(mask[n].shape, generator=generator) for n in mask}
    new = drop_and_regrow(mask, weights, scores, rate)
    new.apply_(params)  # dropped weights to zero; regrown ones were already zero under the old mask
    return new


def check_unit(path: str, **values: float) -> None:
    """Each value must be a fraction in (0, 1] (densities) or [0, 1) (rates): one error naming the key."""
    for key, value in values.items():
        ok = 0 < value <= 1 if key in ("density", "neighbours") else 0 <= value < 1
        if not ok:
            raise ConfigError(f"{path}.{key}: invalid value {value!r}")


class AnnealedDSTStrategy(FederatedStrategy):
    """The server side FedDST, FedSpa and DisPFL share: every client's drop-and-regrow step runs at a cosine-annealed
    rate the server sends ("rate"), reaching 0 at `horizon` (options.t_end, else `horizon_fraction` of the run's
    rounds), and it keeps each layer's count, so an honest upload has the density of the mask it was sent."""

    horizon_fraction: ClassVar[float] = 1.0

    def rate(self, server_round: int) -> float:
        opts = self.options
        end = horizon(opts.t_end, self.setup.rounds, self.horizon_fraction, self.name)
        return cosine_rate(opts.alpha, server_round, end)

    def instructions(self, partition_id: int, server_round: int) -> dict[str, Any]:
        return {"rate": self.rate(server_round)}

    def min_density(self, partition_id: int, sent: Mask) -> float:
        return sent.density() - DENSITY_SLACK
