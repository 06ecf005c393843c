"""The frozen Wan transformer, extended to take the control branch's residuals.

:class:`WanTransformer3DControlModel` has exactly the modules, config and weights of diffusers'
``WanTransformer3DModel`` (the Wan2.2 TI2V-5B folder loads into it unchanged). Its forward is split in
three public steps so that the branch can share the embeddings the frozen model computes once per call:

- :meth:`~WanTransformer3DControlModel.embed`: patch embedding, rotary embedding, time and text
  embeddings -> :class:`WanTokens`;
- :meth:`~WanTransformer3DControlModel.run_blocks`: the transformer blocks, adding a residual to the
  hidden states after each block that has one;
- :meth:`~WanTransformer3DControlModel.head`: output norm, projection and unpatchify.

Without residuals the forward computes the stock model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput


@dataclass
class WanTokens:
    """What the blocks of a Wan transformer (frozen or branch) take, computed once per forward.

    Attributes:
        hidden_states: patch tokens ``(B, L, D)``, ``L = F * (H / p_h) * (W / p_w)`` in (frame, row,
            column) order.
        encoder_hidden_states: the embedded prompt ``(B, S, D)`` (image tokens first, where the model has
            an image embedder).
        temb: time embedding, ``(B, D)`` or per token ``(B, L, D)`` (Wan2.2 TI2V's per-token timesteps).
        timestep_proj: the blocks' modulation, ``(B, 6, D)`` or ``(B, L, 6, D)``.
        rotary_emb: ``(cos, sin)`` of the 3-D rotary position embedding.
        grid: ``(F, H / p_h, W / p_w)``, the token grid after patching.
    """

    hidden_states: torch.Tensor
    encoder_hidden_states: torch.Tensor
    temb: torch.Tensor
    timestep_proj: torch.Tensor
    rotary_emb: tuple[torch.Tensor, torch.Tensor]
    grid: tuple[int, int, int]


class WanTransformer3DControlModel(WanTransformer3DModel):
    """Wan transformer whose forward accepts control residuals (``block_residuals``: block index ->
    ``(B, L, D)`` tensor added to the hidden states after that block)."""

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> WanTokens:
        """Patch, position, time and prompt embeddings of one call.

        Args:
            hidden_states: latents ``(B, C, F, H, W)``.
            timestep: ``(B,)``, or ``(B, L)`` per token (TI2V: 0 on the conditioning frame's tokens).
            encoder_hidden_states: prompt embeddings ``(B, S, text_dim)``.
            encoder_hidden_states_image: CLIP image embeddings (Wan2.1 I2V only; None for TI2V).
        """
        p_t, p_h, p_w = self.config.patch_size
        _, _, frames, height, width = hidden_states.shape
        grid = (frames // p_t, height // p_h, width // p_w)
        rotary_emb = self.rope(hidden_states)
        tokens = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        per_token = timestep.ndim == 2
        seq_len = timestep.shape[1] if per_token else None
        temb, timestep_proj, context, image_context = self.condition_embedder(
            timestep.flatten() if per_token else timestep,
            encoder_hidden_states,
            encoder_hidden_states_image,
            timestep_seq_len=seq_len,
        )
        timestep_proj = timestep_proj.unflatten(2 if per_token else 1, (6, -1))
        if image_context is not None:
            context = torch.cat([image_context, context], dim=1)
        return WanTokens(tokens, context, temb, timestep_proj, rotary_emb, grid)

    def run_block(self, index: int, hidden_states: torch.Tensor, tokens: WanTokens) -> torch.Tensor:
        """Block ``index`` on ``hidden_states`` (recomputed in the backward pass under gradient
        checkpointing)."""
        block = self.blocks[index]
        args = (hidden_states, tokens.encoder_hidden_states, tokens.timestep_proj, tokens.rotary_emb)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def run_blocks(
        self, tokens: WanTokens, block_residuals: Mapping[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """All blocks on ``tokens.hidden_states``; after block ``i`` its residual (if any) is added once."""
        residuals = dict(block_residuals or {})
        unknown = sorted(set(residuals) - set(range(len(self.blocks))))
        if unknown:
            raise ValueError(
                f"residuals for blocks {unknown}, but the transformer has {len(self.blocks)} blocks"
            )
        hidden = tokens.hidden_states
        for i in range(len(self.blocks)):
            hidden = self.run_block(i, hidden, tokens)
            if i in residuals:
                hidden = hidden + residuals[i].to(hidden.dtype)
        return hidden

    def head(self, hidden_states: torch.Tensor, tokens: WanTokens) -> torch.Tensor:
        """Output modulation, projection and unpatchify: ``(B, L, D)`` -> ``(B, C_out, F, H, W)``."""
        temb = tokens.temb
        table = self.scale_shift_table.to(temb.device)
        if temb.ndim == 3:  # per-token time embedding (TI2V): (B, L, 2, D) -> 2 x (B, L, D)
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).unbind(dim=2)
        else:  # (B, 2, D) -> 2 x (B, 1, D)
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        normed = self.norm_out(hidden_states.float()) * (1 + scale) + shift
        out = self.proj_out(normed.type_as(hidden_states))
        frames, rows, cols = tokens.grid
        p_t, p_h, p_w = self.config.patch_size
        out = out.reshape(out.shape[0], frames, rows, cols, p_t, p_h, p_w, -1)
        # (B, F, R, Cc, pt, ph, pw, C) -> (B, C, F, pt, R, ph, Cc, pw)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], out.shape[1], frames * p_t, rows * p_h, cols * p_w)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        block_residuals: Mapping[int, torch.Tensor] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """The stock forward (same inputs and output), plus ``block_residuals`` (block index -> ``(B, L, D)``).

        ``attention_kwargs`` is accepted for call compatibility; a LoRA ``scale`` in it is not supported.
        """
        if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
            raise ValueError(
                "WanTransformer3DControlModel does not apply LoRA scales (attention_kwargs['scale'])"
            )
        tokens = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        out = self.head(self.run_blocks(tokens, block_residuals), tokens)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
