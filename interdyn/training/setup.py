"""What :class:`~interdyn.training.module.InterDynModule` builds from its arguments: the argument checks, and the
networks (the frozen SVD and the trainable branch) with their dtypes and memory settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interdyn.errors import ConfigError
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.released import load_controlnet
from interdyn.models.svd import SVDSource, cast_frozen, checkpoint_transformer_layers, get_svd
from interdyn.models.unet import UNetSpatioTemporalControlModel
from interdyn.training.optim import OPTIMIZERS
from interdyn.training.settings import DTYPES, GROUPS, as_settings, settings_dict


def store_settings(module: Any) -> None:
    """Hold each settings group of ``module``'s hyper-parameters (:data:`GROUPS`) as plain values, checked:
    an object, a config's mapping or None (the defaults) become the same dict, which checkpoints and
    loggers store without pickling a class."""
    for hparams in (module.hparams, getattr(module, "_hparams_initial", None)):
        if hparams is None:
            continue
        for group, cls in GROUPS.items():
            if group in hparams:
                hparams[group] = settings_dict(as_settings(cls, hparams[group]))


def check_arguments(hp: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for an optimizer setting the module cannot train with (the settings groups
    check themselves)."""
    learning_rate, weight_decay, adam_betas = hp["learning_rate"], hp["weight_decay"], hp["adam_betas"]
    if not (learning_rate > 0 and weight_decay >= 0 and all(0 <= b < 1 for b in adam_betas)):
        raise ConfigError(
            "learning_rate must be > 0, weight_decay >= 0 and adam_betas in [0, 1), got "
            f"{learning_rate}, {weight_decay} and {tuple(adam_betas)}"
        )
    if hp["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {hp['optimizer']!r}")
    if not 0.0 <= hp.get("ema_decay", 0.0) < 1.0:
        raise ConfigError(f"ema_decay must lie in [0, 1) (0: no moving average), got {hp['ema_decay']}")


@dataclass
class Networks:
    """The frozen SVD parts (in eval mode, no gradients, in their storage dtype) and the trainable branch."""

    unet: UNetSpatioTemporalControlModel
    vae: Any
    image_encoder: Any
    scheduler: Any
    controlnet: ControlNetSDVModel


def build_networks(
    svd: SVDSource,
    controlnet: str | None,
    conditioning_channels: int,
    conditioning_embedding_out_channels: Sequence[int],
    frozen_dtype: str,
) -> Networks:
    """Load the frozen SVD and build the branch: a copy of the UNet encoder, or saved weights (``controlnet``)."""
    dtype = DTYPES[frozen_dtype]
    # A new branch starts as a copy of the UNet encoder: copy it before the frozen parts are cast,
    # so that a bf16 frozen SVD does not round the branch's starting weights.
    # The VAE is read in float32: SVD's encodes in float32 (force_upcast) and must not be rounded first.
    parts = get_svd(svd, torch_dtype=None if controlnet is None else dtype, vae_float32=True)
    for frozen in (parts.unet, parts.vae, parts.image_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    if controlnet is None:
        branch = ControlNetSDVModel.from_unet(
            parts.unet,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        )
    else:
        branch = load_controlnet(controlnet, torch_dtype=torch.float32)
        if branch.config.conditioning_channels != conditioning_channels:
            raise ConfigError(
                f"the branch at {controlnet!r} takes {branch.config.conditioning_channels} control "
                f"channels, but conditioning_channels={conditioning_channels}"
            )
    branch.train()
    # SVD's VAE sets force_upcast: it encodes in float32 whatever its stored dtype, as SVD's pipeline does.
    # Such a VAE stays in float32 (never rounded to the frozen dtype), so no step casts it back and forth.
    upcast_vae = bool(parts.vae.config.get("force_upcast", False))
    for frozen in (
        (parts.unet, parts.image_encoder) if upcast_vae else (parts.unet, parts.vae, parts.image_encoder)
    ):
        cast_frozen(frozen, dtype)
    return Networks(parts.unet, parts.vae, parts.image_encoder, parts.scheduler, branch)


def enable_checkpointing(
    branch: ControlNetSDVModel,
    unet: UNetSpatioTemporalControlModel,
    branch_on: bool,
    unet_on: bool,
    fine: bool,
) -> None:
    """Recompute activations in the backward pass: the branch's and / or the UNet's blocks, and with ``fine``
    each whole spatio-temporal transformer layer of those."""
    for part, on in ((branch, branch_on), (unet, unet_on)):
        if on:
            part.enable_gradient_checkpointing()
            if fine:
                checkpoint_transformer_layers(part)
