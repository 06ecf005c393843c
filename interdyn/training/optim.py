"""The branch's optimizer and gradient clipping: Adam (the paper's), Adam with its moments in host memory
(:mod:`interdyn.training.optim_offload`), AdamW or 8-bit AdamW, and clipping that also works with fused kernels under
mixed precision."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from interdyn.errors import ConfigError

OPTIMIZERS = ("adam", "adam_offload", "adamw", "adamw8bit")


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    learning_rate: float,
    adam_betas: tuple[float, float],
    weight_decay: float,
    fused: bool,
) -> torch.optim.Optimizer:
    """``name`` (one of :data:`OPTIMIZERS`) over ``params``; ``fused`` picks the fused kernels of Adam / AdamW
    (``adam_offload`` updates chunk by chunk with PyTorch's Adam and has no fused form)."""
    kwargs: dict[str, Any] = {"lr": learning_rate, "betas": tuple(adam_betas), "weight_decay": weight_decay}
    if name == "adam_offload":
        from interdyn.training.optim_offload import OffloadedAdam

        return OffloadedAdam(params, **kwargs)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                "optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), or use adam / adamw"
            ) from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    optimizer_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer_class(params, **kwargs, **({"fused": True} if fused else {}))


def unscales_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` unscales the gradients inside its step (fused kernels)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def clip_unscaling_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    gradient_clip_val: float,
    gradient_clip_algorithm: str | None,
) -> None:
    """Clip the gradients of an optimizer that unscales inside its step. Without a grad scaler (bf16) the
    gradients are true gradients and are clipped as they are; with one (fp16) they are unscaled first, and
    the scaler then tells the fused step that they already are."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
