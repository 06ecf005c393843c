"""The encoder steps shared by the SVD UNet and the control branch (they have the same modules).

Both hold ``time_proj``, ``time_embedding``, ``add_time_proj``, ``add_embedding`` and ``down_blocks``
with the names and shapes of diffusers' ``UNetSpatioTemporalConditionModel``.
"""

from __future__ import annotations

import torch
from torch import nn


def conditioning_embeddings(
    model: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time + added-time embedding and cross-attention context, both repeated per frame:
    ``(B*T, C_emb)`` and ``(B*T, L, D)`` for ``sample`` shaped ``(B, T, C, h, w)``."""
    batch, frames = sample.shape[:2]
    timesteps = torch.as_tensor(timestep, device=sample.device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    timesteps = timesteps.expand(batch)
    emb = model.time_embedding(model.time_proj(timesteps).to(sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = emb + model.add_embedding(time_embeds)
    return emb.repeat_interleave(frames, dim=0), encoder_hidden_states.repeat_interleave(frames, dim=0)


def run_down_blocks(
    down_blocks: nn.ModuleList,
    hidden: torch.Tensor,
    emb: torch.Tensor,
    context: torch.Tensor,
    image_only_indicator: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run ``conv_in``'s output through the down blocks: the last hidden state and every skip feature
    (``conv_in``'s output first)."""
    skips: tuple[torch.Tensor, ...] = (hidden,)
    for block in down_blocks:
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        hidden, block_skips = block(
            hidden_states=hidden, temb=emb, image_only_indicator=image_only_indicator, **kwargs
        )
        skips += block_skips
    return hidden, skips
