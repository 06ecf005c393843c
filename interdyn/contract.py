"""The batch contract between the data pipeline and the model.

``dict(pixel_values=(B, T, 3, H, W) float in [-1, 1], control=(B, T, C, H, W) float in [-1, 1],
key=list[str], ...)``. A wrong value range silently ruins a training run, so it is checked here, at
the boundary, with an error that says what is wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from interdyn.errors import BatchContractError

RANGE_TOLERANCE = 1e-3
_warned_positive = False


def _warn_positive(lo: float, hi: float) -> None:
    global _warned_positive
    _warned_positive = True
    warnings.warn(
        f"batch['pixel_values'] has no negative values (range [{lo:.3g}, {hi:.3g}]); if the frames are in "
        "[0, 1] they must be mapped with 2 * x - 1. This warning is shown once.",
        stacklevel=3,
    )


def masks_to_control(masks: torch.Tensor) -> torch.Tensor:
    """Driver masks -> the control tensor ``(B, T, 3, H, W)`` in ``{-1, +1}`` (background -1, driver +1).

    Accepts ``(T, H, W)`` or ``(B, T, H, W)`` masks (bool, uint8 0/255 or float 0/1), ``(B, T, 1, H, W)``
    masks, or an already encoded ``(B, T, 3, H, W)`` float tensor in ``[-1, 1]`` (returned as float).
    """
    if masks.ndim == 5 and masks.shape[2] == 3 and masks.is_floating_point():
        if masks.min() < -1.0 - RANGE_TOLERANCE or masks.max() > 1.0 + RANGE_TOLERANCE:
            raise ValueError("an encoded control tensor (B, T, 3, H, W) must hold values in [-1, 1]")
        return masks.float()
    if masks.ndim == 5 and masks.shape[2] == 1:
        masks = masks[:, :, 0]
    if masks.ndim == 3:
        masks = masks[None]
    if masks.ndim != 4:
        raise ValueError(
            "control masks must be (T, H, W), (B, T, H, W), (B, T, 1, H, W) or (B, T, 3, H, W); "
            f"got {tuple(masks.shape)}"
        )
    if masks.dtype == torch.bool:
        binary = masks
    elif masks.dtype == torch.uint8:
        binary = masks > 127
    else:
        binary = masks > 0.5
    return (binary.float() * 2.0 - 1.0).unsqueeze(2).expand(-1, -1, 3, -1, -1).contiguous()


def to_contract(batch: dict[str, Any]) -> dict[str, Any]:
    """Expand a compact batch (``pixel_values`` uint8 ``(B, T, 3, H, W)``, ``control`` bool driver masks
    ``(B, T, H, W)``) into the contract's floats, on whatever device it lives. Batches already in
    contract form are returned unchanged. Loader workers ship the compact form (4x less memory
    traffic) and the DataModule expands it after the transfer to the device."""
    pixels, control = batch.get("pixel_values"), batch.get("control")
    out = dict(batch)
    if isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8:
        out["pixel_values"] = pixels.float() / 127.5 - 1.0
    if isinstance(control, torch.Tensor) and control.dtype == torch.bool and control.ndim == 4:
        out["control"] = masks_to_control(control)
    elif isinstance(control, torch.Tensor) and control.dtype == torch.bool and control.ndim == 5:
        out["control"] = control.float() * 2.0 - 1.0  # multi-channel control (B, T, C, H, W)
    return out


def _check_video(name: str, value: Any, channels: int | None, check_values: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise BatchContractError(f"batch['{name}'] must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 5:
        raise BatchContractError(f"batch['{name}'] must be (B, T, C, H, W), got shape {tuple(value.shape)}")
    if channels is not None and value.shape[2] != channels:
        raise BatchContractError(
            f"batch['{name}'] has {value.shape[2]} channels, expected {channels} (shape {tuple(value.shape)})"
            + (
                "; the model's conditioning_channels must match the data's control_type "
                "(binary and boxes: 3, semantic and oracle: 2)"
                if name == "control"
                else ""
            )
        )
    if not value.is_floating_point():
        raise BatchContractError(
            f"batch['{name}'] has dtype {value.dtype}; expected float values in [-1, 1] "
            "(uint8 frames must be mapped with x / 127.5 - 1)"
        )
    if check_values:
        _check_range(name, value)
    return value


def _check_range(name: str, value: torch.Tensor) -> None:
    lo, hi = value.min().item(), value.max().item()
    if not (lo == lo and hi == hi) or lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        hint = " (it looks like [0, 255]: map with x / 127.5 - 1)" if hi > 2.0 else ""
        raise BatchContractError(f"batch['{name}'] values lie in [{lo:.3g}, {hi:.3g}], outside [-1, 1]{hint}")
    if name == "pixel_values" and lo >= -RANGE_TOLERANCE and value.numel() > 4096 and not _warned_positive:
        # All-positive frames are usually [0, 1] data fed by mistake, but bright scenes exist: warn once.
        _warn_positive(lo, hi)


def has_clips(batch: Mapping[str, Any]) -> bool:
    """False for a batch that holds only records of skipped samples (``batch["skipped"]``, evaluation
    loaders), which steps and callbacks pass over."""
    return not (isinstance(batch, Mapping) and "skipped" in batch and "control" not in batch)


def validate_batch(
    batch: Mapping[str, Any],
    control_channels: int | None = 3,
    spatial_multiple: int = 8,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch against the contract and return ``(pixel_values, control)``. ``check_values=False``
    checks keys, shapes and dtypes only (no value is read back from the device).

    Raises:
        BatchContractError: naming the key and the problem (missing key, shape, dtype, range, size).
    """
    if not isinstance(batch, Mapping):
        raise BatchContractError(
            f"a batch must be a dict with pixel_values and control, got {type(batch).__name__}"
        )
    missing = [k for k in ("pixel_values", "control") if k not in batch]
    if missing:
        raise BatchContractError(f"batch is missing {missing}; it has keys {sorted(batch)}")
    pixels = _check_video("pixel_values", batch["pixel_values"], 3, check_values)
    control = _check_video("control", batch["control"], control_channels, check_values)
    if pixels.shape[:2] != control.shape[:2] or pixels.shape[-2:] != control.shape[-2:]:
        raise BatchContractError(
            f"pixel_values {tuple(pixels.shape)} and control {tuple(control.shape)} differ in batch, frames or size"
        )
    h, w = pixels.shape[-2:]
    if h % spatial_multiple or w % spatial_multiple:
        raise BatchContractError(
            f"frames are {h}x{w}; height and width must be multiples of {spatial_multiple}"
        )
    keys = batch.get("key")
    if keys is not None and len(keys) != pixels.shape[0]:
        raise BatchContractError(f"batch['key'] has {len(keys)} entries for a batch of {pixels.shape[0]}")
    return pixels, control


CACHED_KEYS = ("latent_mean", "latent_std", "image_latents", "image_embeds")


def is_cached_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a batch carries cached conditioning (``make latents``) instead of frames."""
    return isinstance(batch, Mapping) and "latent_mean" in batch


def validate_cached_batch(
    batch: Mapping[str, Any],
    control_channels: int | None = 3,
    latent_channels: int = 4,
    spatial_factor: int = 8,
    embed_dim: int | None = None,
    check_values: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Check a cached-conditioning batch and return ``(control, cache)``.

    ``control`` as in :func:`validate_batch`; ``latent_mean`` / ``latent_std`` ``(B, T, C, H/f, W/f)``,
    ``image_latents`` ``(B, C, H/f, W/f)``, ``image_embeds`` ``(B, 1, D)`` (``D = embed_dim`` when given),
    all finite (not checked with ``check_values=False``).
    """
    missing = [k for k in ("control", *CACHED_KEYS) if k not in batch]
    if missing:
        raise BatchContractError(f"cached batch is missing {missing}; it has keys {sorted(batch)}")
    control = _check_video("control", batch["control"], control_channels, check_values)
    b, t, _, h, w = control.shape
    latent_shape = (b, t, latent_channels, h // spatial_factor, w // spatial_factor)
    expected = {
        "latent_mean": latent_shape,
        "latent_std": latent_shape,
        "image_latents": (b, latent_channels, h // spatial_factor, w // spatial_factor),
    }
    cache: dict[str, torch.Tensor] = {}
    for name in CACHED_KEYS:
        value = batch[name]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise BatchContractError(f"batch['{name}'] must be a float tensor")
        want = expected.get(name)
        if want is not None and tuple(value.shape) != want:
            raise BatchContractError(
                f"batch['{name}'] has shape {tuple(value.shape)}, expected {want} for control {tuple(control.shape)}; "
                "was the cache built for another size or frame count?"
            )
        if name == "image_embeds" and (
            value.ndim != 3 or value.shape[:2] != (b, 1) or (embed_dim and value.shape[2] != embed_dim)
        ):
            raise BatchContractError(
                f"batch['image_embeds'] must be (B, 1, {embed_dim or 'D'}), got {tuple(value.shape)}; "
                "was the cache built with another SVD?"
            )
        if check_values and not torch.isfinite(value).all():
            raise BatchContractError(f"batch['{name}'] holds NaN or infinite values")
        cache[name] = value
    return control, cache


WAN_CACHED_KEY = "wan_latents"


def is_wan_cached_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a batch carries the Wan backbone's cached latents (``make latents`` with a Wan config)."""
    return isinstance(batch, Mapping) and WAN_CACHED_KEY in batch


def validate_wan_cached_batch(
    batch: Mapping[str, Any],
    control_channels: int | None = 3,
    latent_channels: int = 48,
    spatial_factor: int = 16,
    temporal_factor: int = 4,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch of Wan's cached latents and return ``(control, latents)``: ``control`` as in
    :func:`validate_batch`, ``latents`` ``(B, C, 1 + (T - 1) / t, H/f, W/f)`` float and finite (not checked with
    ``check_values=False``)."""
    missing = [k for k in ("control", WAN_CACHED_KEY) if k not in batch]
    if missing:
        raise BatchContractError(f"cached batch is missing {missing}; it has keys {sorted(batch)}")
    control = _check_video("control", batch["control"], control_channels, check_values)
    b, t, _, h, w = control.shape
    latents = batch[WAN_CACHED_KEY]
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise BatchContractError(f"batch['{WAN_CACHED_KEY}'] must be a float tensor")
    want = (b, latent_channels, 1 + (t - 1) // temporal_factor, h // spatial_factor, w // spatial_factor)
    if tuple(latents.shape) != want:
        raise BatchContractError(
            f"batch['{WAN_CACHED_KEY}'] has shape {tuple(latents.shape)}, expected {want} for control "
            f"{tuple(control.shape)}; was the cache built for another size or frame count, or another VAE?"
        )
    if check_values and not torch.isfinite(latents).all():
        raise BatchContractError(f"batch['{WAN_CACHED_KEY}'] holds NaN or infinite values")
    return control, latents
