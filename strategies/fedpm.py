"""FedPM (Isik et al., ICLR 2023, "Sparse random networks for communication-efficient federated learning"):
the weights stay frozen at theta_0; clients learn which of them to keep (ALGORITHMS.md section 6).

Every prunable weight (conv and linear) has a keep probability theta. Downlink: the server's theta_g, float32
(n x 4 bytes per client, counted as sent). Client: scores s = logit(theta_g) (clipped to [prob_clip,
1 - prob_clip] so they stay finite), trained for E local epochs by `optimizer` at `lr` (the authors' code: Adam,
0.1); every forward pass samples a fresh Bernoulli(sigmoid(s)) mask m and uses theta_0 * m, with a
straight-through gradient (dm/dtheta = 1; `ste: scaled` is the authors' code, dm/dtheta = theta). Uplink: ONE
binary mask sampled from the final sigmoid(s), as a mask alone (`fedlottery.comm.codec.encode_mask`: bitmap,
indices or Golomb-Rice, no values), about n * H(p) bits for a mask of density p. Server: a Beta(alpha, beta)
posterior per weight; alpha <- alpha + sum_k m_k, beta <- beta + sum_k (1 - m_k) over the round's accepted
uploads (each client counts once), reset to the prior (alpha_0, beta_0) = (`prior_alpha`, `prior_beta`) before
the update of every `reset_every`-th round and of the first `reset_warmup` rounds (defaults: every round, as in
both public implementations; `reset_every: 0` never resets). theta_g = (alpha - 1) / (alpha + beta - 2), the
posterior mode; where alpha + beta = 2 (a flat posterior, no evidence) theta_g keeps its value.

Weights never change and never travel: theta_0 is rebuilt from the seed on both sides. Non-prunable tensors
(biases, BatchNorm) are not trained either (the authors' code also masks biases; here they stay at theta_0,
which is zero for the glorot / kaiming inits); BatchNorm running statistics do move with every forward pass,
so every non-prunable tensor is personal (never sent; each client keeps its own statistics).
The evaluated model is theta_0 under a mask drawn from theta_g (`eval_mask`): `threshold` keeps theta_g > 0.5
(the deterministic mode; default), `sample` draws one Bernoulli(theta_g) mask per client and evaluation (the
authors' public code evaluates a sampled mask). Evaluation messages carry theta_0's values under that mask
(simulation traffic, counted in eval_bytes). A client's deployed model is theta_0 under its own final
probabilities, by the same rule (`threshold`: sigmoid(s) > 0.5, `sample`: the mask it uploaded).
The run's `density_mean` is the density of the evaluated mask (`sample`: its expectation, mean theta_g);
the server's per-client masks stay dense, since a client always receives all of theta_g.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from flwr.app import Message, MessageType

from fedlottery.comm import pack_state
from fedlottery.errors import ConfigError
from fedlottery.models import clone_state
from fedlottery.sparsity import Mask
from fedlottery.supermask import (initial_probabilities, keep_probabilities, make_scores, sample_mask,
                                  score_optimizer, shuffled_batches, train_scores)
from strategies.base import ClientTask, ClientUpdate, FederatedStrategy, Reply, ServerSetup, mask_crc
from strategies.replies import Sent


@dataclass
class FedPMOptions:
    lr: float = 0.1  # learning rate of the mask scores (the authors' code: Adam, 0.1)
    optimizer: Literal["adam", "sgd"] = "adam"
    init: Literal["normal", "half"] = "normal"  # first theta_g: sigmoid(N(0, 1)) seeded (authors' code), or 0.5
    prob_clip: float = 0.01  # a client clips theta_g into [clip, 1 - clip] before taking its logit
    ste: Literal["identity", "scaled"] = "identity"  # straight-through dm/dtheta: 1, or theta (authors' code)
    prior_alpha: float = 1.0  # Beta prior alpha_0 (>= 1, so the posterior mode lies in [0, 1])
    prior_beta: float = 1.0  # Beta prior beta_0
    reset_every: int = 1  # reset the posterior to the prior every this many rounds (0: never)
    reset_warmup: int = 0  # ... and in every one of the first this many rounds
    eval_mask: Literal["threshold", "sample"] = "threshold"

    def validate(self, path: str) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{path}.lr: must be > 0, got {self.lr}")
        if not 0 < self.prob_clip < 0.5:
            raise ConfigError(f"{path}.prob_clip: must be in (0, 0.5), got {self.prob_clip}")
        for key in ("prior_alpha", "prior_beta"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 1):
                raise ConfigError(f"{path}.{key}: must be >= 1 (the Beta mode is then a probability), "
                                  f"got {getattr(self, key)}")
        for key in ("reset_every", "reset_warmup"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{path}.{key}: must be >= 0, got {getattr(self, key)}")


def mask_entropy_bits(n: int, density: float) -> float:
    """n * H(density): what an ideal entropy coder needs for an iid mask of that density, in bits."""
    if density <= 0.0 or density >= 1.0:
        return 0.0
    return n * -(density * math.log2(density) + (1 - density) * math.log2(1 - density))


class FedPMStrategy(FederatedStrategy):
    """Federated probabilistic masks over frozen random weights; Bayesian aggregation of sampled masks."""

    name = "fedpm"
    options_cls = FedPMOptions
    state_fields = FederatedStrategy.state_fields + ("alpha", "beta")
    metric_bounds = {"density": (0.0, 1.0), "prob-mean": (0.0, 1.0)}

    # ---- client half ----------------------------------------------------------------------------------------
    @classmethod
    def personal_names(cls, options: Any, batchnorm: list[str]) -> frozenset[str]:
        raise RuntimeError("strategy 'fedpm' keeps every non-prunable tensor on the client, so this ClientApp must "
                           "ask FederatedStrategy.personal_tensors (every tensor name), not personal_names")

    @classmethod
    def personal_tensors(cls, options: Any, names: list[str], prunable: list[str], batchnorm: list[str]
                         ) -> frozenset[str]:
        return frozenset(names) - frozenset(prunable)

    @classmethod
    def train_probabilities(cls, task: ClientTask) -> dict[str, torch.Tensor]:
        """E local epochs on the mask scores from theta_g (held in the model's prunable slots, which end up
        holding theta_0 again); returns the final keep probabilities sigmoid(s)."""
        opts: FedPMOptions = task.options
        model, names = task.model, list(task.mask)
        current = model.state_dict()
        with torch.no_grad():  # the model holds theta_g in the prunable slots: read it, then restore theta_0
            scores = make_scores({n: current[n] for n in names}, opts.prob_clip)
            for n in names:
                current[n].copy_(task.theta0[n])
        optimizer = score_optimizer(scores, opts.optimizer, opts.lr, task.local.momentum)
        batches = shuffled_batches(task.data.train, task.local.batch_size, task.generator, epochs=task.local.epochs)
        train_scores(model, {n: task.theta0[n].detach() for n in names}, scores, optimizer, batches,
                     task.generator, opts.ste)
        return keep_probabilities(scores)

    @classmethod
    def client_train(cls, task: ClientTask) -> ClientUpdate:
        opts: FedPMOptions = task.options
        names, y = list(task.mask), task.data.train[1]
        final = cls.train_probabilities(task)
        upload = {n: sample_mask(final[n], task.generator) for n in names}  # ONE sampled mask goes up
        keep = upload if opts.eval_mask == "sample" else {n: final[n] > 0.5 for n in names}
        state = clone_state(task.model)  # non-prunable tensors: theta_0, with this client's BatchNorm statistics
        for n in names:
            state[n] = task.theta0[n] * keep[n].to(task.theta0[n].dtype)  # the model this client would deploy
        kept = sum(int(m.sum()) for m in upload.values())
        total = sum(m.numel() for m in upload.values())
        prob_mean = sum(float(p.sum()) for p in final.values()) / max(total, 1)
        return ClientUpdate(state, task.mask, len(y), {"density": kept / max(total, 1), "prob-mean": prob_mean},
                            upload=upload)

    # ---- server half ----------------------------------------------------------------------------------------
    def __init__(self, setup: ServerSetup, options: Any = None):
        super().__init__(setup, options)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{setup.seed}/fedpm/init".encode()))
        shapes = {n: setup.theta0[n].shape for n in setup.prunable}
        self.global_state.update(initial_probabilities(shapes, self.options.init, generator))
        self.alpha = {n: torch.full(self.shapes[n], float(self.options.prior_alpha)) for n in setup.prunable}
        self.beta = {n: torch.full(self.shapes[n], float(self.options.prior_beta)) for n in setup.prunable}

    def _value_type(self, name: str) -> str:
        """Prunable tensors come up as masks alone (no values); nothing else comes up at all."""
        return "mask" if name in self.shapes else super()._value_type(name)

    def _check_reply(self, reply: Message, sent: Sent, server_round: int, training: bool) -> Reply:
        decoded = super()._check_reply(reply, sent, server_round, training)
        if training and decoded.upload.state:
            # The uploaded sample is the payload (decoded as 0/1 values in `state`), not a mask the client now
            # trains under: it keeps the dense one, and the server's masks for it stay dense.
            decoded.upload.mask = None
        return decoded

    def reset_due(self, server_round: int) -> bool:
        every, warmup = self.options.reset_every, self.options.reset_warmup
        return server_round <= warmup or (every > 0 and server_round % every == 0)

    def aggregate(self, server_round: int, replies: list[Reply]) -> None:
        if self.reset_due(server_round):
            for n in self.alpha:
                self.alpha[n].fill_(float(self.options.prior_alpha))
                self.beta[n].fill_(float(self.options.prior_beta))
        for r in replies:  # each client's sample counts once (no sample-count weighting, as in the paper)
            for n in self.alpha:
                ones = r.upload.state[n].float()
                self.alpha[n] += ones
                self.beta[n] += 1.0 - ones
        for n in self.alpha:
            spread = self.alpha[n] + self.beta[n] - 2.0
            mode = (self.alpha[n] - 1.0) / spread.clamp_min(1e-12)
            self.global_state[n] = torch.where(spread > 0, mode, self.global_state[n]).clamp(0.0, 1.0)

    # ---- evaluation -----------------------------------------------------------------------------------------
    def evaluation_mask(self, partition_id: int | None, server_round: int) -> Mask:
        """The mask a client's evaluated model uses: theta_g > 0.5, or one Bernoulli(theta_g) draw seeded by
        (seed, round, client)."""
        probs = {n: self.global_state[n] for n in self.shapes}
        if self.options.eval_mask == "threshold":
            return Mask({n: p > 0.5 for n, p in probs.items()})
        who = "global" if partition_id is None else str(partition_id)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.setup.seed}/{server_round}/{who}/fedpm".encode()))
        return Mask({n: sample_mask(p, generator) for n, p in probs.items()})

    def downlink(self, partition_id: int, message_type: str, server_round: int) -> Message:
        message = super().downlink(partition_id, message_type, server_round)
        if message_type == MessageType.EVALUATE:
            # The model to evaluate is theta_0 under the evaluation mask: send those weights (and that mask)
            # instead of theta_g, which a client evaluating weights could not use.
            mask = self.evaluation_mask(partition_id, server_round)
            weights = {n: self.setup.theta0[n] * mask[n].to(self.setup.theta0[n].dtype) for n in self.shapes}
            comm = self.setup.comm
            message.content["model"] = pack_state(weights, mask, self.client_holds[partition_id], self.personal,
                                                  comm.codec, comm.values)
            message.content["config"]["mask-crc"] = mask_crc(mask)
        return message

    def global_model_state(self) -> dict[str, torch.Tensor]:
        mask = self.evaluation_mask(None, 0)
        return {n: (t * mask[n].to(t.dtype) if n in mask else t) for n, t in self.setup.theta0.items()}

    def density_mean(self) -> float:
        total = sum(p.numel() for n, p in self.global_state.items() if n in self.shapes)
        if self.options.eval_mask == "threshold":
            kept = sum(int((self.global_state[n] > 0.5).sum()) for n in self.shapes)
        else:
            kept = sum(float(self.global_state[n].sum()) for n in self.shapes)
        return kept / max(total, 1)
