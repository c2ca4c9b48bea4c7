"""Binding a Mask to a live model so training keeps pruned weights exactly zero.

Two cheap fused operations per step: gradients of pruned entries are zeroed before the optimizer step (so
momentum and Adam moments never accumulate for them), and the weights are re-multiplied by the mask after
it (so nothing, e.g. decoupled weight decay or stale state, can revive them). This costs far less than a
forward pre-hook that rebuilds every weight on every forward pass.
"""
from __future__ import annotations

import torch
from torch import nn

from fedlottery.sparsity.mask import Mask


class MaskedParameters:
    """The prunable parameters of `model` paired with their keep-masks (as float tensors on their device)."""

    def __init__(self, model: nn.Module, mask: Mask):
        params = dict(model.named_parameters())
        missing = [n for n in mask if n not in params]
        if missing:
            raise KeyError(f"mask names tensors the model lacks: {missing}")
        self.params = [params[n] for n in mask]
        self.masks = [mask[n].to(device=params[n].device, dtype=params[n].dtype) for n in mask]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights."""
        torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights; call between backward() and optimizer.step()."""
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(masks))

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-entry optimizer state (momentum, Adam moments) of pruned weights.

        Needed when a mask changes under a live optimizer; a fresh optimizer has no state to clear.
        """
        for param, keep in zip(self.params, self.masks):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(keep)
