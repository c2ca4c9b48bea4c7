"""LotteryFL (Li et al. 2020): personalised lottery tickets on non-IID clients (ALGORITHMS.md section 2).

Client, each round: evaluate the downloaded subnetwork theta_g * m_k on local validation data; if accuracy
> acc_threshold and density > target_density, prune prune_rate of each layer's remaining weights by the
magnitude of the *downloaded* weights (one step, clamped to hit the target unless overshoot), rewind the
survivors to theta_0; then train E epochs with pruned weights frozen at zero and upload the kept values.
Server: every prunable entry is the mean over the participating clients whose mask keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedlottery.aggregation import masked_mean
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import MaskedParameters, magnitude_prune
from fedlottery.training import evaluate, train
from fedlottery.sparsity import Mask
from strategies.base import DENSITY_SLACK, ClientTask, ClientUpdate, FederatedStrategy, Reply, one_step_floor


@dataclass
class LotteryFLOptions:
    acc_threshold: float = 0.5
    prune_rate: float = 0.2  # of each layer's remaining weights, output layer included
    target_density: float = 0.1  # paper: 0.1, 0.3 or 0.5
    overshoot: bool = False  # True: the authors' code, which keeps pruning while density > target
    rewind: Literal["init", "global"] = "init"  # survivors back to theta_0 (paper) or keep theta_g
    gate_data: Literal["val", "test80"] = "val"  # test80: the authors' code, <= 80 local test images
    weighted: bool = False  # True: weight the masked mean by client sample counts

    def validate(self, path: str) -> None:
        for key in ("acc_threshold", "prune_rate", "target_density"):
            value = getattr(self, key)
            if not 0 < value < 1 and not (key == "acc_threshold" and value == 0):
                raise ConfigError(f"{path}.{key}: must be in (0, 1), got {value}")


class LotteryFLStrategy(FederatedStrategy):
    """LotteryFL: gated pruning by downloaded weights, rewind to theta_0, masked mean over holders."""

    name = "lotteryfl"
    options_cls = LotteryFLOptions
    needs_validation = staticmethod(lambda options: options.gate_data == "val")  # the pruning gate's data
    metric_bounds = {"gate-acc": (0.0, 1.0), "pruned": (0.0, 1.0), "density": (0.0, 1.0)}

    def min_density(self, partition_id: int, sent: Mask) -> float:
        """One pruning step per round, clamped at the target unless the authors' overshoot is on."""
        if self.options.overshoot:
            return sent.density() * (1 - self.options.prune_rate) - DENSITY_SLACK
        return one_step_floor(sent, self.options.prune_rate, self.options.target_density)

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: LotteryFLOptions = task.options
        gate = task.data.val if opts.gate_data == "val" else tuple(t[:80] for t in task.data.test)
        _, acc = evaluate(task.model, gate)
        mask = task.mask
        pruned = False
        if acc > opts.acc_threshold and mask.density() > opts.target_density:
            params = dict(task.model.named_parameters())
            new_mask = magnitude_prune(mask, {n: params[n] for n in mask}, opts.prune_rate,
                                       target_density=opts.target_density, overshoot=opts.overshoot)
            pruned = new_mask != mask
            mask = new_mask
            if pruned and opts.rewind == "init":
                task.model.load_state_dict(task.theta0)
            MaskedParameters(task.model, mask)  # zero the newly pruned weights
        train(task.model, task.data.train, task.local.as_training(), task.generator, mask=mask,
              epochs=task.local.epochs)
        return ClientUpdate(
            clone_state(task.model), mask, len(task.data.train[1]),
            {"gate-acc": float(acc), "pruned": float(pruned), "density": mask.density()},
        )

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        uploads = self.uploads(replies, self.options.weighted)
        self.global_state = masked_mean(self.global_state, uploads, self.setup.prunable)
