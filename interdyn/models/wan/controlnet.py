"""InterDyn's control branch for a Wan transformer (ControlNet style, diffusers conventions).

The branch (:class:`WanControlNetModel`) holds trainable copies of the frozen transformer's patch embedding
and of some of its blocks (``layers``, see :func:`select_layers`; default: the first half of the blocks,
as InterDyn's SVD branch copies the encoder half of the UNet). It runs a control stream:

    c_0 = patch_embedding(latent input) + mask_encoder(driver masks)
    c_j = block_j(c_{j-1})        (with the frozen model's prompt, time and rotary embeddings)
    residual_j = zero_linear_j(c_j) * conditioning_scale

and ``residual_j`` is added to the frozen transformer's hidden states after frozen block ``layers[j]``.
Block ``j`` of the branch starts as a copy of frozen block ``layers[j]`` (:meth:`from_transformer`).

The mask encoder (:class:`WanControlConditioningEncoder`) matches the Wan2.2 VAE's compression: a 2x2
pixel unshuffle (the VAE's own patchify), per-frame convolutions down by 8 more (16 in all), then the
frames packed as the VAE packs them (the first frame alone, then 4 frames per latent frame, so a clip of
``1 + 4k`` frames gives ``1 + k`` latent frames) and a zero-initialised patch projection onto the
transformer's token grid. With every zero projection still zero the branch changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.utils import BaseOutput
from torch import nn

from interdyn.models.wan.transformer import WanTokens, WanTransformer3DControlModel

DEFAULT_LAYERS = "half"


def select_layers(num_layers: int, layers: str | Sequence[int] | None = DEFAULT_LAYERS) -> list[int]:
    """The frozen blocks that receive a branch residual (and whose copies the branch holds).

    ``layers`` is a list of block indices, or one of: ``"half"`` (default: blocks ``0 .. n/2 - 1``, 15 of
    Wan2.2 TI2V-5B's 30), ``"all"``, ``"first:N"`` (blocks ``0 .. N-1``), ``"every:K"`` (blocks 0, K, 2K, ...).
    """
    if layers is None or layers == "half":
        chosen = list(range(max(1, num_layers // 2)))
    elif layers == "all":
        chosen = list(range(num_layers))
    elif isinstance(layers, str):
        kind, _, value = layers.partition(":")
        if kind not in ("first", "every") or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"unknown layer choice {layers!r}; use 'half', 'all', 'first:N', 'every:K' or a list"
            )
        n = int(value)
        chosen = list(range(min(n, num_layers))) if kind == "first" else list(range(0, num_layers, n))
    else:
        chosen = [int(i) for i in layers]
    if not chosen or chosen != sorted(set(chosen)) or chosen[0] < 0 or chosen[-1] >= num_layers:
        raise ValueError(
            f"branch layers {chosen} must be distinct increasing block indices in 0..{num_layers - 1}"
        )
    return chosen


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def check_clip_frames(num_frames: int, temporal: int = 4) -> int:
    """The latent frame count of a clip of ``num_frames`` frames (``1 + (T - 1) / temporal``); raises a
    one-sentence ``ValueError`` when ``num_frames`` is not ``1 + temporal * k``."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        lower = 1 + temporal * max(0, (num_frames - 1) // temporal)
        raise ValueError(
            f"The clip has {num_frames} frames, but the Wan2.2 VAE packs the first frame alone and then "
            f"{temporal} frames per latent frame, so it needs 1 + {temporal}k frames (e.g. {lower} or "
            f"{lower + temporal})."
        )
    return 1 + (num_frames - 1) // temporal


class WanControlConditioningEncoder(nn.Module):
    """Driver masks ``(B, T, C, H, W)`` in ``[-1, 1]`` -> control tokens ``(B, L, D)`` on the transformer's
    token grid (``T = 1 + 4k``, ``H, W`` multiples of the VAE's x16 times the patch size)."""

    def __init__(
        self,
        conditioning_channels: int,
        block_out_channels: Sequence[int],
        pixel_patch: int,
        temporal: int,
        patch_size: Sequence[int],
        inner_dim: int,
    ) -> None:
        super().__init__()
        self.pixel_patch = pixel_patch
        self.temporal = temporal
        channels = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels * pixel_patch**2, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        patch = tuple(patch_size)
        self.conv_out = _zero(nn.Conv3d(channels[-1] * temporal, inner_dim, kernel_size=patch, stride=patch))

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent position along each axis (the VAE's spatial compression)."""
        return self.pixel_patch * 2 ** (len(self.blocks) // 2)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, T, C, H, W)`` masks to ``(B, L, D)`` tokens."""
        if control.ndim != 5:
            raise ValueError(f"control must be (B, T, C, H, W), got shape {tuple(control.shape)}")
        batch, frames, _, height, width = control.shape
        latent_frames = check_clip_frames(frames, self.temporal)
        x = F.pixel_unshuffle(control.flatten(0, 1), self.pixel_patch)
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = x.unflatten(0, (batch, frames))
        # the first frame alone fills its latent frame (repeated), then groups of `temporal` frames
        x = torch.cat([x[:, :1].expand(-1, self.temporal, -1, -1, -1), x[:, 1:]], dim=1)
        x = x.reshape(batch, latent_frames, self.temporal * x.shape[2], *x.shape[-2:]).transpose(1, 2)
        return self.conv_out(x).flatten(2).transpose(1, 2)


@dataclass
class WanControlNetOutput(BaseOutput):
    """``block_residuals``: one residual ``(B, L, D)`` per branch block, added after the frozen block of the
    same position in ``layers``."""

    block_residuals: tuple[torch.Tensor, ...]
    layers: tuple[int, ...]

    def by_layer(self) -> dict[int, torch.Tensor]:
        """Frozen block index -> residual (what the transformer's ``block_residuals`` takes)."""
        return dict(zip(self.layers, self.block_residuals, strict=True))


class WanControlNetModel(ModelMixin, ConfigMixin):
    """InterDyn's trainable branch for a frozen Wan transformer (see the module docstring)."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanTransformerBlock"]
    _keep_in_fp32_modules = ["scale_shift_table", "norm1", "norm2", "norm3"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        ffn_dim: int = 14336,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        added_kv_proj_dim: int | None = None,
        layers: tuple[int, ...] = tuple(range(15)),
        num_transformer_layers: int = 30,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        conditioning_patch_size: int = 2,
        vae_scale_factor_spatial: int = 16,
        vae_scale_factor_temporal: int = 4,
    ) -> None:
        super().__init__()
        layers = select_layers(num_transformer_layers, list(layers))
        downs = conditioning_patch_size * 2 ** (len(conditioning_embedding_out_channels) - 1)
        if downs != vae_scale_factor_spatial:
            raise ValueError(
                f"the mask encoder downsamples by {downs} (patch {conditioning_patch_size} x 2^"
                f"{len(conditioning_embedding_out_channels) - 1}), the VAE by {vae_scale_factor_spatial}: "
                "give conditioning_embedding_out_channels one entry per x2 step plus one"
            )
        inner_dim = num_attention_heads * attention_head_dim
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.controlnet_cond_embedding = WanControlConditioningEncoder(
            conditioning_channels,
            conditioning_embedding_out_channels,
            conditioning_patch_size,
            vae_scale_factor_temporal,
            patch_size,
            inner_dim,
        )
        self.blocks = nn.ModuleList(
            WanTransformerBlock(
                inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim
            )
            for _ in layers
        )
        self.controlnet_blocks = nn.ModuleList(_zero(nn.Linear(inner_dim, inner_dim)) for _ in layers)
        self.gradient_checkpointing = False

    @classmethod
    def from_transformer(
        cls,
        transformer: WanTransformer3DControlModel,
        layers: str | Sequence[int] | None = DEFAULT_LAYERS,
        vae_scale_factor_spatial: int = 16,
        vae_scale_factor_temporal: int = 4,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        conditioning_patch_size: int = 2,
        vae: Any | None = None,
    ) -> WanControlNetModel:
        """A branch whose patch embedding and blocks start as copies of ``transformer``'s (block ``j`` from
        frozen block ``layers[j]``); the mask encoder is fresh and every output projection zero. Given the
        ``vae`` (``AutoencoderKLWan``), its compression factors replace the ``vae_scale_factor_*`` arguments."""
        if vae is not None:
            vae_scale_factor_spatial = vae.config.scale_factor_spatial
            vae_scale_factor_temporal = vae.config.scale_factor_temporal
        cfg = transformer.config
        chosen = select_layers(cfg.num_layers, layers)
        branch = cls(
            patch_size=tuple(cfg.patch_size),
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            in_channels=cfg.in_channels,
            ffn_dim=cfg.ffn_dim,
            cross_attn_norm=cfg.cross_attn_norm,
            qk_norm=cfg.qk_norm,
            eps=cfg.eps,
            added_kv_proj_dim=cfg.added_kv_proj_dim,
            layers=tuple(chosen),
            num_transformer_layers=cfg.num_layers,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            conditioning_patch_size=conditioning_patch_size,
            vae_scale_factor_spatial=vae_scale_factor_spatial,
            vae_scale_factor_temporal=vae_scale_factor_temporal,
        )
        branch.patch_embedding.load_state_dict(transformer.patch_embedding.state_dict())
        for block, index in zip(branch.blocks, chosen, strict=True):
            block.load_state_dict(transformer.blocks[index].state_dict())
        return branch

    @property
    def layers(self) -> list[int]:
        """The frozen block indices the residuals are added after, in order."""
        return list(self.config.layers)

    def embed_control(self, control: torch.Tensor) -> torch.Tensor:
        """Masks ``(B, T, C, H, W)`` -> control tokens ``(B, L, D)`` (independent of the denoising step:
        a sampler computes them once)."""
        return self.controlnet_cond_embedding(control.to(self.patch_embedding.weight.dtype))

    def forward(
        self,
        hidden_states: torch.Tensor,
        tokens: WanTokens,
        control: torch.Tensor | None = None,
        control_tokens: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> WanControlNetOutput | tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
        """The residuals for one denoiser call.

        Args:
            hidden_states: the frozen transformer's latent input ``(B, C, F, H, W)``.
            tokens: the frozen transformer's :meth:`~WanTransformer3DControlModel.embed` of this call
                (prompt, time and rotary embeddings are shared, not recomputed).
            control: masks ``(B, T, C, H_px, W_px)`` in ``[-1, 1]``, ``T = 1 + 4 (F - 1)``; or
            control_tokens: their :meth:`embed_control`.
            conditioning_scale: multiplies every residual.
        """
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(hidden_states.to(dtype)).flatten(2).transpose(1, 2)
        if control_tokens is None:
            if control is None:
                raise ValueError(
                    "the branch needs the control masks (control) or their tokens (control_tokens)"
                )
            control_tokens = self.embed_control(control)
        if control_tokens.shape != x.shape:
            raise ValueError(
                f"the control masks give {control_tokens.shape[1]} tokens, the latents {x.shape[1]} (grid "
                f"{tokens.grid}): masks need 1 + 4(F - 1) frames and the video's height and width"
            )
        context = tokens.encoder_hidden_states.to(dtype)
        hidden = x + control_tokens.to(dtype)
        residuals = []
        for block, proj in zip(self.blocks, self.controlnet_blocks, strict=True):
            args = (hidden, context, tokens.timestep_proj, tokens.rotary_emb)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, *args)
            else:
                hidden = block(*args)
            residuals.append(proj(hidden) * conditioning_scale)
        layers = tuple(self.layers)
        if not return_dict:
            return (tuple(residuals), layers)
        return WanControlNetOutput(block_residuals=tuple(residuals), layers=layers)
