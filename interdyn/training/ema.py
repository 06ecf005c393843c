"""The exponential moving average of trained weights: its warm-up rule, its update, and putting it in and
out of the live model. Used by InterDyn's branch on either backbone (``BranchTraining``, the hooks both
modules share) and the world's UNet (``interdyn.world.base``); plain PyTorch, no Lightning."""

from __future__ import annotations

import torch


def average_decay(step: int, max_decay: float) -> float:
    """The decay at ``step``: ``(1 + step) / (10 + step)``, capped at ``max_decay``, so that the early
    average follows the fast-changing weights instead of holding on to their initial values."""
    return min(max_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_average(average: torch.nn.Module, live: torch.nn.Module, step: int, max_decay: float) -> None:
    """Move every parameter of ``average`` towards ``live``'s by ``1 - average_decay(step, max_decay)``."""
    averages = list(average.parameters())
    weights = [p.detach().to(a.dtype) for p, a in zip(live.parameters(), averages, strict=True)]
    torch._foreach_lerp_(averages, weights, 1.0 - average_decay(step, max_decay))


@torch.no_grad()
def swap_in(live: torch.nn.Module, average: torch.nn.Module) -> list[torch.Tensor]:
    """Copy the average into ``live`` in place (the optimizer, DDP and ``torch.compile`` keep seeing the same
    tensors); returns the live weights, for :func:`swap_out`."""
    params = list(live.parameters())
    backup = [p.detach().clone() for p in params]
    for p, a in zip(params, average.parameters(), strict=True):
        p.copy_(a)
    return backup


@torch.no_grad()
def swap_out(live: torch.nn.Module, backup: list[torch.Tensor]) -> None:
    """Put the weights :func:`swap_in` returned back into ``live``, in place."""
    for p, saved in zip(live.parameters(), backup, strict=True):
        p.copy_(saved)
