"""Joint geometric transforms of frames and masks: one random draw applied to both.

Resize so that the frame covers the target size (the short side fits when the aspect ratio allows;
frames bicubic with antialiasing, masks with torchvision's ``NEAREST``, as the authors' code resizes
them), then crop ``height x width``: ``center`` (torchvision's ``center_crop``, whose offsets round half
to even, as the authors' demo crops), ``random`` or ``mask_aware`` (a window centred on the bounding box
of the union of all driver masks of the clip, clamped to the image; centre crop when the masks are empty). Optional horizontal flip
(off by default: it changes the physics of text-labelled actions such as "pushing left").
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

CROPS = ("center", "random", "mask_aware")


def resize_to_cover(
    frames: torch.Tensor, masks: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``frames`` (T, 3, H, W) uint8 and ``masks`` (T, H, W) bool, resized so that both sides are at least
    ``height x width`` with the aspect ratio kept. Frames stay uint8: PyTorch's uint8 antialiased
    bicubic path is much faster on CPU than the float one."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) == (h, w):
        return frames, masks
    frames = F.interpolate(frames, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    return frames, resize_masks(masks, (new_h, new_w))


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., H, W)`` bool masks resized with torchvision's NEAREST (what the authors' code uses)."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    if (h, w) == tuple(size):
        return masks
    flat = masks.reshape(-1, 1, h, w).to(torch.uint8)
    resized = TF.resize(flat, list(size), interpolation=InterpolationMode.NEAREST, antialias=False)
    return resized.reshape(*lead, *size) > 0


def center_offsets(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of torchvision's ``center_crop`` window (offsets rounded half to even)."""
    return int(round((h - height) / 2.0)), int(round((w - width) / 2.0))


def crop_offsets(
    masks: torch.Tensor, height: int, width: int, mode: str, rng: random.Random | None = None
) -> tuple[int, int]:
    """Top-left corner of the crop window for ``masks`` (T, H, W) already resized."""
    h, w = masks.shape[-2:]
    max_top, max_left = h - height, w - width
    if max_top < 0 or max_left < 0:
        raise ValueError(f"cannot crop {height}x{width} from {h}x{w}")
    if mode == "random":
        rng = rng or random
        return rng.randint(0, max_top), rng.randint(0, max_left)
    if mode == "mask_aware":
        union = masks.any(dim=0)
        if union.any():
            ys = torch.nonzero(union.any(dim=1)).flatten()
            xs = torch.nonzero(union.any(dim=0)).flatten()
            cy = (ys[0].item() + ys[-1].item() + 1) / 2
            cx = (xs[0].item() + xs[-1].item() + 1) / 2
            top = int(np.clip(round(cy - height / 2), 0, max_top))
            left = int(np.clip(round(cx - width / 2), 0, max_left))
            return top, left
    elif mode != "center":
        raise ValueError(f"unknown crop {mode!r}; use one of {CROPS}")
    return center_offsets(h, w, height, width)


def joint_transform(
    frames: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    crop: str = "center",
    hflip: bool = False,
    rng: random.Random | None = None,
    with_geometry: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``frames`` (T, H, W, 3) uint8 and ``masks`` (T, H, W) bool -> frames (T, 3, height, width) uint8 and
    masks (T, height, width) bool, geometrically aligned. :func:`interdyn.contract.to_contract` turns
    them into the batch contract's floats (the DataModule does it after the batch reaches the device).

    With ``with_geometry`` a third value ``(scale_y, scale_x, top, left, flipped)`` maps source pixel
    coordinates to output ones: ``x' = x * scale_x - left`` (then ``width - x'`` when flipped)."""
    frames_t = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2)
    masks_t = torch.as_tensor(np.asarray(masks)).bool()
    if frames_t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames_t.dtype}")
    if frames_t.shape[0] != masks_t.shape[0] or frames_t.shape[-2:] != masks_t.shape[-2:]:
        raise ValueError(
            f"frames {tuple(frames_t.shape)} and masks {tuple(masks_t.shape)} differ in length or size"
        )
    source_h, source_w = frames_t.shape[-2:]
    frames_t, masks_t = resize_to_cover(frames_t, masks_t, height, width)
    top, left = crop_offsets(masks_t, height, width, crop, rng)
    geometry = (frames_t.shape[-2] / source_h, frames_t.shape[-1] / source_w, top, left, False)
    if crop == "center":  # torchvision's own centre crop, as the authors' demo calls it
        frames_t = TF.center_crop(frames_t, [height, width])
        masks_t = TF.center_crop(masks_t, [height, width])
    else:
        frames_t = frames_t[..., top : top + height, left : left + width]
        masks_t = masks_t[..., top : top + height, left : left + width]
    if hflip and (rng or random).random() < 0.5:
        frames_t, masks_t = frames_t.flip(-1), masks_t.flip(-1)
        geometry = (*geometry[:4], True)
    if with_geometry:
        return frames_t.contiguous(), masks_t.contiguous(), geometry
    return frames_t.contiguous(), masks_t.contiguous()


def apply_geometry(
    masks: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    geometry: tuple[float, float, int, int, bool],
) -> torch.Tensor:
    """Apply the resize, crop and flip that :func:`joint_transform` returned as ``geometry`` to other masks
    of the same source clip, ``(..., H, W)`` bool (e.g. per-object masks ``(K, T, H, W)``)."""
    m = torch.as_tensor(np.asarray(masks)).bool()
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    scale_y, scale_x, top, left, flipped = geometry
    size = (round(h * scale_y), round(w * scale_x))
    flat = resize_masks(m.reshape(-1, 1, h, w), size)
    flat = flat[..., int(top) : int(top) + height, int(left) : int(left) + width]
    if flipped:
        flat = flat.flip(-1)
    return flat.reshape(*lead, height, width).contiguous()
