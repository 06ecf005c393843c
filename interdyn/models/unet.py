"""The frozen SVD UNet, extended to take the control branch's residuals.

:class:`UNetSpatioTemporalControlModel` has exactly the modules, config and weights of diffusers'
``UNetSpatioTemporalConditionModel`` (stock SVD folders load into it unchanged); its forward adds
each skip residual once, to the skip it belongs to, and the mid residual to the mid-block output.
Without residuals it computes the stock forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (DiffusionPipeline.from_pretrained looks it up here)
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

from interdyn.models.encoder import conditioning_embeddings, run_down_blocks


class UNetSpatioTemporalControlModel(UNetSpatioTemporalConditionModel):
    """SVD UNet whose forward accepts ControlNet residuals (``down_block_additional_residuals``,
    ``mid_block_additional_residual``), each added exactly once."""

    def _run_down_blocks(
        self,
        hidden: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        image_only_indicator: torch.Tensor,
        residuals: Sequence[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run ``conv_in``'s output through the down blocks; return the last hidden state and the skips,
        each skip plus its residual (added once, after the encoder has run)."""
        hidden, skips = run_down_blocks(self.down_blocks, hidden, emb, context, image_only_indicator)
        if residuals is not None:
            if len(residuals) != len(skips):
                raise ValueError(
                    f"got {len(residuals)} down-block residuals, the UNet has {len(skips)} skips"
                )
            skips = tuple(s + r.to(s.dtype) for s, r in zip(skips, residuals, strict=True))
        return hidden, skips

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple:
        """Denoiser forward pass (same inputs and output as the stock UNet, plus the residuals).

        Args:
            sample: ``(B, T, in_channels, h, w)``.
            timestep: scalar or ``(B,)``.
            encoder_hidden_states: ``(B, L, cross_attention_dim)``.
            added_time_ids: ``(B, 3)``.
            down_block_additional_residuals: one ``(B*T, C, h_i, w_i)`` tensor per skip, or ``None``.
            mid_block_additional_residual: ``(B*T, C, h_mid, w_mid)`` or ``None``.
        """
        batch, frames = sample.shape[:2]
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        emb, context = conditioning_embeddings(self, sample, timestep, encoder_hidden_states, added_time_ids)
        hidden = self.conv_in(sample.flatten(0, 1))
        image_only_indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        hidden, skips = self._run_down_blocks(
            hidden, emb, context, image_only_indicator, down_block_additional_residuals
        )
        hidden = self.mid_block(
            hidden_states=hidden,
            temb=emb,
            encoder_hidden_states=context,
            image_only_indicator=image_only_indicator,
        )
        if mid_block_additional_residual is not None:
            hidden = hidden + mid_block_additional_residual.to(hidden.dtype)

        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            upsample_size = (
                skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            )
            kwargs = (
                {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            )
            hidden = block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=block_skips,
                upsample_size=upsample_size,
                image_only_indicator=image_only_indicator,
                **kwargs,
            )

        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        out = hidden.reshape(batch, frames, *hidden.shape[1:])
        if not return_dict:
            return (out,)
        return UNetSpatioTemporalConditionOutput(sample=out)
