"""The InterDyn control branch: a trainable copy of the SVD UNet encoder driven by mask videos.

The module and config names match the released InterDyn checkpoint (class ``ControlNetSDVModel``) so
that its folder loads strictly with ``from_pretrained``. The residuals it returns are meant to be added
*once* to the matching skip connections of :class:`~interdyn.models.unet.UNetSpatioTemporalControlModel`;
see :mod:`interdyn.models.released` for weights trained with the released (cumulative) addition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from diffusers.utils import BaseOutput
from torch import nn

from interdyn.models.encoder import conditioning_embeddings, run_down_blocks

# Config entries copied from a UNet by `from_unet` (the encoder-relevant part of its architecture); with the
# two conditioning entries, the fields of the released checkpoint's config.
SHARED_CONFIG = (
    "sample_size",
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
    "num_frames",
)
# Submodules whose weights are copied from the UNet (time_proj holds no weights but is listed for clarity).
_SHARED_MODULES = (
    "conv_in",
    "time_proj",
    "time_embedding",
    "add_time_proj",
    "add_embedding",
    "down_blocks",
    "mid_block",
)


@dataclass
class ControlNetSDVOutput(BaseOutput):
    """Residuals of the control branch, already multiplied by ``conditioning_scale``.

    Args:
        down_block_res_samples: one tensor per UNet skip connection, shaped ``(batch * frames, C, h, w)``.
        mid_block_res_sample: residual for the UNet mid-block output, ``(batch * frames, C, h, w)``.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def _per_block(value: int | tuple | list, name: str, n: int) -> list:
    """A per-down-block setting as a list of ``n`` (an int is repeated); ValueError for another length."""
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected one per down block ({n})")
    return values


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def context_input(latents: torch.Tensor, known: torch.Tensor | int) -> torch.Tensor:
    """A context branch's input: ``(B, T, C, h, w)`` latents whose first ``known`` frames (an int, or one
    per sample ``(B,)``) are known -> ``(B, T, C + 1, h, w)``: those latents, zeros at the other frames, and
    a last channel that is 1 at the known frames and 0 elsewhere."""
    b, t = latents.shape[:2]
    known = torch.as_tensor(known, device=latents.device).reshape(-1).expand(b)
    mask = (torch.arange(t, device=latents.device)[None] < known[:, None]).to(latents.dtype)
    mask = mask[:, :, None, None, None]
    return torch.cat([latents * mask, mask.expand(-1, -1, 1, *latents.shape[3:])], dim=2)


def _zero_context_conv(channels: int, out_channels: int) -> nn.Conv2d:
    # The known latents and their mask enter at latent resolution, next to conv_in's output (as SVD's image
    # latent enters the UNet), through their own conv at zero: a branch made a context branch is unchanged.
    conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlConditioningEncoder(nn.Module):
    """Per-frame encoder of the control masks down to the latent resolution (x8 smaller).

    ``conv_in`` (3 -> c0) + SiLU, then for each consecutive pair of ``block_out_channels`` a 3x3 conv
    at the same width and a stride-2 3x3 conv to the next width (each followed by SiLU), then a
    zero-initialised 3x3 conv to the UNet's first block width.
    """

    def __init__(
        self,
        out_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_next in zip(block_out_channels[:-1], block_out_channels[1:], strict=True):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_next, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, C, H, W)`` masks to ``(N, out_channels, H / 2**k, W / 2**k)`` features."""
        x = F.silu(self.conv_in(cond))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class ControlNetSDVModel(ModelMixin, ConfigMixin):
    """ControlNet branch for Stable Video Diffusion (the InterDyn control branch).

    A copy of the SVD UNet's input conv, time embeddings and encoder (down blocks and mid block),
    plus a control encoder whose output is added after ``conv_in``, and zero-initialised 1x1 convs
    on every skip feature and on the mid-block output. The config fields mirror
    ``UNetSpatioTemporalConditionModel`` (``up_block_types`` is kept for checkpoint compatibility and
    builds nothing) plus ``conditioning_channels``, ``conditioning_embedding_out_channels`` and
    ``residual_addition``: a marker, always ``"single"``, that tells weights meant for a once-per-skip
    addition apart from the released checkpoint (whose config lacks it).

    A *context branch* (``context_frames > 0``) also takes the first ``k <= context_frames`` frames of the
    window as known latents and a per-frame known mask (:func:`context_input`), through a zero-initialised
    conv added next to ``conv_in``'s output; ``context_window`` records the base's window (``num_frames``)
    it was trained on. Make one from any branch with :meth:`from_branch` (it starts equal to that branch).

    Build a new branch with :meth:`from_unet`; load the released InterDyn weights with
    :func:`interdyn.models.released.load_controlnet`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        residual_addition: str = "single",
        context_frames: int = 0,
        context_window: int | None = None,
    ) -> None:
        super().__init__()
        if residual_addition != "single":
            raise ValueError(
                f"residual_addition={residual_addition!r}: only 'single' is supported; load released-style "
                "weights with interdyn.models.load_controlnet, which converts them"
            )
        n = len(down_block_types)
        _per_block(block_out_channels, "block_out_channels", n)
        heads = _per_block(num_attention_heads, "num_attention_heads", n)
        cross_dims = _per_block(cross_attention_dim, "cross_attention_dim", n)
        layers = _per_block(layers_per_block, "layers_per_block", n)
        transformer_layers = _per_block(transformer_layers_per_block, "transformer_layers_per_block", n)

        c0 = block_out_channels[0]
        time_embed_dim = c0 * 4
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        self.controlnet_cond_embedding = ControlConditioningEncoder(
            c0, conditioning_channels, tuple(conditioning_embedding_out_channels)
        )

        self._build_down_blocks(
            down_block_types,
            block_out_channels,
            layers,
            transformer_layers,
            cross_dims,
            heads,
            time_embed_dim,
        )

        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=transformer_layers[-1],
            cross_attention_dim=cross_dims[-1],
            num_attention_heads=heads[-1],
        )
        self.controlnet_mid_block = _zero_conv(block_out_channels[-1])
        if context_frames < 0:
            raise ValueError(
                f"context_frames must be >= 0 (0: a branch without context), got {context_frames}"
            )
        if context_frames:
            self.controlnet_context_embedding = _zero_context_conv(out_channels + 1, c0)

    def _build_down_blocks(
        self,
        down_block_types: Sequence[str],
        block_out_channels: Sequence[int],
        layers: list[int],
        transformer_layers: list,
        cross_dims: list,
        heads: list,
        time_embed_dim: int,
    ) -> None:
        """The encoder copy's down blocks and, interleaved in creation order, the zero convs of their skips."""
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList(
            [_zero_conv(block_out_channels[0])]
        )  # skip 0: conv_in output
        prev = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            is_last = i == len(down_block_types) - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=transformer_layers[i],
                    in_channels=prev,
                    out_channels=block_out_channels[i],
                    temb_channels=time_embed_dim,
                    add_downsample=not is_last,
                    resnet_eps=1e-5,
                    cross_attention_dim=cross_dims[i],
                    num_attention_heads=heads[i],
                    resnet_act_fn="silu",
                )
            )
            # One skip per resnet layer, plus one for the downsampler.
            self.controlnet_down_blocks.extend(
                _zero_conv(block_out_channels[i]) for _ in range(layers[i] + (0 if is_last else 1))
            )
            prev = block_out_channels[i]

    @property
    def skips_per_block(self) -> list[int]:
        """Number of skip connections each down block contributes (conv_in counted with block 0)."""
        counts = [
            len(block.resnets) + (1 if block.downsamplers is not None else 0) for block in self.down_blocks
        ]
        counts[0] += 1
        return counts

    @classmethod
    def from_unet(
        cls,
        unet: UNetSpatioTemporalConditionModel,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
    ) -> ControlNetSDVModel:
        """Build a branch with the UNet's encoder architecture and (by default) a copy of its weights.

        Copies ``conv_in``, the time and added-time embeddings, all down blocks and the mid block; the
        control encoder's output conv and all 1x1 residual convs start at zero, so the branch leaves
        the UNet's output unchanged until it is trained.
        """
        kwargs = {key: unet.config[key] for key in SHARED_CONFIG if key in unet.config}
        controlnet = cls(
            **kwargs,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        )
        if load_weights_from_unet:
            for name in _SHARED_MODULES:
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict(), strict=True)
        return controlnet

    @property
    def is_context_branch(self) -> bool:
        """True when the branch takes known context frames (``context_frames > 0``)."""
        return int(self.config.context_frames) > 0

    @classmethod
    def from_branch(
        cls, branch: ControlNetSDVModel, context_frames: int, context_window: int
    ) -> ControlNetSDVModel:
        """A context branch taking up to ``context_frames`` known frames of ``context_window``-frame windows,
        with ``branch``'s weights (a plain branch, the released one included, or a context branch) and, where
        ``branch`` has none, a zero context conv: it gives ``branch``'s residuals for any context."""
        if not 0 < context_frames < context_window:
            raise ValueError(
                f"context_frames must be at least 1 and smaller than the window of {context_window} frames, "
                f"got {context_frames}"
            )
        config = {k: v for k, v in branch.config.items() if not k.startswith("_")}
        config.update(context_frames=int(context_frames), context_window=int(context_window))
        model = cls(**config)
        missing, unexpected = model.load_state_dict(branch.state_dict(), strict=False)
        if unexpected or any(not k.startswith("controlnet_context_embedding.") for k in missing):
            raise ValueError(f"the branch's weights do not fit: missing {missing}, unexpected {unexpected}")
        param = next(branch.parameters())
        return model.to(param.device, param.dtype).train(branch.training)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
        controlnet_context: torch.Tensor | None = None,
    ) -> ControlNetSDVOutput | tuple:
        """Compute the residuals for the UNet.

        Args:
            sample: ``(B, T, in_channels, h, w)``: the preconditioned noisy latents concatenated with
                the image latents, exactly as fed to the UNet.
            timestep: scalar or ``(B,)`` noise level as the UNet takes it (``0.25 * ln(sigma)``).
            encoder_hidden_states: ``(B, L, cross_attention_dim)`` CLIP image embeddings.
            added_time_ids: ``(B, 3)`` ``[fps_id, motion_bucket_id, noise_aug_strength]``.
            controlnet_cond: ``(B, T, conditioning_channels, 8h, 8w)`` control masks in ``[-1, 1]``.
            conditioning_scale: multiplies every residual.
            controlnet_context: a context branch's ``(B, T, out_channels + 1, h, w)`` known latents and mask
                (:func:`context_input`); None: no known frames (``k = 0``).
        """
        batch, frames = sample.shape[:2]
        if controlnet_cond.shape[:2] != (batch, frames):
            raise ValueError(
                f"controlnet_cond has shape {tuple(controlnet_cond.shape)}, expected (batch={batch}, frames={frames}, C, H, W)"
            )
        emb, context = conditioning_embeddings(self, sample, timestep, encoder_hidden_states, added_time_ids)
        hidden = self.conv_in(sample.flatten(0, 1))
        hidden = hidden + self.controlnet_cond_embedding(controlnet_cond.flatten(0, 1).to(hidden.dtype))
        if self.is_context_branch:  # k = 0 is the zero input (the conv's bias, once trained, still counts)
            if controlnet_context is None:
                controlnet_context = sample.new_zeros(
                    batch, frames, self.config.out_channels + 1, *sample.shape[3:]
                )
            hidden = hidden + self.controlnet_context_embedding(
                controlnet_context.flatten(0, 1).to(hidden.dtype)
            )
        elif controlnet_context is not None:
            raise ValueError("controlnet_context was given to a branch without context (context_frames 0)")
        image_only_indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        hidden, skips = run_down_blocks(self.down_blocks, hidden, emb, context, image_only_indicator)
        hidden = self.mid_block(
            hidden_states=hidden,
            temb=emb,
            encoder_hidden_states=context,
            image_only_indicator=image_only_indicator,
        )

        down = tuple(
            conv(skip) * conditioning_scale
            for conv, skip in zip(self.controlnet_down_blocks, skips, strict=True)
        )
        mid = self.controlnet_mid_block(hidden) * conditioning_scale
        if not return_dict:
            return down, mid
        return ControlNetSDVOutput(down_block_res_samples=down, mid_block_res_sample=mid)
