"""What :class:`~interdyn.training.wan_module.InterDynWanModule` builds from its arguments: the frozen Wan2.2
TI2V parts, the trainable branch, the fixed prompt embedding and the clip rules of the loaded model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from interdyn.data.clip_spec import ClipRules
from interdyn.errors import ConfigError, WeightsNotFoundError
from interdyn.models.svd import cast_frozen
from interdyn.models.wan.components import WanComponents, WanScheduler, WanSource, get_wan
from interdyn.models.wan.controlnet import WanControlNetModel
from interdyn.models.wan.prompt import WAN_PROMPT_LENGTH, load_prompt_embeds, zero_prompt_embeds
from interdyn.training.settings import DTYPES

BACKBONE = "Wan2.2 TI2V"


@dataclass
class WanNetworks:
    """The frozen Wan parts (eval mode, no gradients, the transformer in its storage dtype, the VAE in
    float32), the trainable branch (float32) and the fixed prompt embedding ``(1, S, text_dim)``."""

    wan: WanComponents
    controlnet: WanControlNetModel
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None  # the guidance's, when one is named

    @property
    def scheduler(self) -> WanScheduler:
        """The backbone's sampler."""
        return self.wan.scheduler


def _load_branch(path: str) -> WanControlNetModel:
    """A branch saved with ``save_pretrained`` (a folder holding ``config.json`` and its weights)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(
            f"the Wan branch folder '{path}' does not exist or holds no config.json; pass a folder written by "
            "WanControlNetModel.save_pretrained, or leave controlnet unset to copy the transformer's blocks"
        )
    return WanControlNetModel.from_pretrained(str(folder), torch_dtype=torch.float32)


def build_wan_networks(
    wan: WanSource,
    controlnet: str | None,
    layers: str | Sequence[int],
    conditioning_channels: int,
    conditioning_embedding_out_channels: Sequence[int],
    frozen_dtype: str,
    prompt_embeds: str | None = None,
    negative_prompt_embeds: str | None = None,
) -> WanNetworks:
    """Load (or build) the frozen Wan and make the branch: copies of the transformer's blocks at ``layers``
    taken before the transformer is cast to ``frozen_dtype`` (so that a bf16 backbone does not round the
    branch's starting weights), or the saved branch at ``controlnet``; the prompt embedding from the file
    ``prompt_embeds`` (None: zeros), and the prompt guidance's negative one from ``negative_prompt_embeds``
    (None: none)."""
    parts = get_wan(wan, torch_dtype=None if controlnet is None else DTYPES[frozen_dtype])
    for frozen in (parts.transformer, parts.vae):
        frozen.requires_grad_(False)
        frozen.eval()
    if controlnet is None:
        try:
            branch = WanControlNetModel.from_transformer(
                parts.transformer,
                layers=layers,
                conditioning_channels=conditioning_channels,
                conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
                vae=parts.vae,
            )
        except ValueError as err:
            raise ConfigError(f"the Wan branch: {err}") from None
    else:
        branch = _load_branch(controlnet)
        if branch.config.conditioning_channels != conditioning_channels:
            raise ConfigError(
                f"the branch at {controlnet!r} takes {branch.config.conditioning_channels} control channels, "
                f"but conditioning_channels={conditioning_channels}"
            )
    branch.train()
    cast_transformer(parts.transformer, DTYPES[frozen_dtype])
    text_dim = parts.transformer.config.text_dim
    prompt = fixed_prompt_embeds(prompt_embeds, text_dim)
    negative = None
    if negative_prompt_embeds is not None:
        negative = fixed_prompt_embeds(negative_prompt_embeds, text_dim, option="negative_prompt_embeds")
    return WanNetworks(parts, branch, prompt, negative)


def cast_transformer(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen transformer to ``dtype`` but for the modules its class keeps in float32 (norms, time
    embedding, rotary table), as diffusers' ``from_pretrained(torch_dtype=...)`` loads it."""
    cast_frozen(transformer, dtype)
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    if dtype != torch.float32 and keep:
        for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
            if keep & set(name.split(".")) and tensor.is_floating_point():
                tensor.data = tensor.data.float()


def fixed_prompt_embeds(
    path: str | None, text_dim: int, length: int = WAN_PROMPT_LENGTH, option: str = "prompt_embeds"
) -> torch.Tensor:
    """The fixed prompt embedding: zeros ``(1, length, text_dim)`` without ``path``, else the one stored in
    ``path`` (:func:`~interdyn.models.wan.prompt.save_prompt_embeds`), checked against ``text_dim``;
    ``option`` is the setting that named it, for the messages."""
    if path is None:
        return zero_prompt_embeds(text_dim, length)
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(
            f"the prompt embedding file '{path}' ({option}) does not exist; write one with `interdyn prompt`"
            + (", or leave prompt_embeds unset for zeros" if option == "prompt_embeds" else "")
        )
    try:
        embeds = load_prompt_embeds(file).float()
    except (ValueError, OSError) as err:
        raise ConfigError(f"cannot read the prompt embedding {path} ({option}): {err}") from None
    if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[-1] != text_dim:
        raise ConfigError(
            f"the prompt embedding in {path} ({option}) has shape {tuple(embeds.shape)}, but this transformer takes "
            f"(1, S, {text_dim})"
        )
    return embeds


def clip_rules(wan: WanComponents) -> ClipRules:
    """What the loaded Wan needs of a clip: ``1 + 4k`` frames (its VAE's temporal packing) and sizes that are
    multiples of the VAE's spatial compression times the patch size (32 for TI2V-5B)."""
    vae, patch = wan.vae.config, wan.transformer.config.patch_size
    return ClipRules(BACKBONE, vae.scale_factor_temporal, vae.scale_factor_spatial * patch[1])
