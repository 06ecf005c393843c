"""Frames and masks stay aligned through every crop (checked on the built-in dataset's pixels)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep.synthetic_world import HAND_COLOUR, SLIDER_COLOUR, World, make_video
from interdyn.data.transforms import crop_offsets, joint_transform, resize_to_cover


def driver_colour_fraction(
    frames: torch.Tensor, masks: torch.Tensor, colour: np.ndarray
) -> tuple[float, float]:
    """Fraction of pixels with the driver's colour inside the (eroded) mask, and outside the (dilated) mask."""
    rgb = frames.float().permute(0, 2, 3, 1)
    near = (rgb - torch.tensor(colour, dtype=torch.float32)).abs().amax(-1) < 40
    m = masks.float()[:, None]
    eroded = -F.max_pool2d(-m, 5, 1, 2)[:, 0] > 0.5
    dilated = F.max_pool2d(m, 5, 1, 2)[:, 0] > 0.5
    inside = near[eroded].float().mean().item() if eroded.any() else 1.0
    outside = near[~dilated].float().mean().item()
    return inside, outside


@pytest.mark.parametrize("crop", ["center", "random", "mask_aware"])
@pytest.mark.parametrize("hflip", [False, True])
def test_driver_pixels_sit_under_the_mask(crop, hflip):
    video = make_video(np.random.default_rng(3), World(height=96, width=128), num_frames=14, fps=7.0)
    colour = HAND_COLOUR if video["path"].kind == "hand" else SLIDER_COLOUR
    for seed in range(3):
        frames, masks = joint_transform(
            video["frames"], video["control"], 48, 80, crop=crop, hflip=hflip, rng=random.Random(seed)
        )
        assert frames.shape == (14, 3, 48, 80) and masks.shape == (14, 48, 80)
        assert frames.dtype == torch.uint8 and masks.dtype == torch.bool
        inside, outside = driver_colour_fraction(frames, masks, colour)
        assert inside > 0.95, inside
        assert outside < 0.01, outside


def test_a_misaligned_mask_fails_the_same_check():
    """The alignment check above is able to fail: shift the masks by a few pixels."""
    video = make_video(np.random.default_rng(3), World(height=96, width=128), num_frames=14, fps=7.0)
    colour = HAND_COLOUR if video["path"].kind == "hand" else SLIDER_COLOUR
    frames, masks = joint_transform(video["frames"], video["control"], 48, 80, crop="center")
    inside, _ = driver_colour_fraction(frames, torch.roll(masks, shifts=8, dims=-1), colour)
    assert inside < 0.9


def test_resize_covers_the_target_keeping_aspect():
    frames = torch.randint(0, 255, (2, 3, 240, 427), dtype=torch.uint8)
    masks = torch.zeros(2, 240, 427, dtype=torch.bool)
    f, m = resize_to_cover(frames, masks, 256, 384)
    assert f.shape[-2:] == (256, 455) and m.shape[-2:] == (256, 455)
    f, m = resize_to_cover(
        torch.zeros(1, 3, 240, 320, dtype=torch.uint8), torch.zeros(1, 240, 320, dtype=torch.bool), 256, 384
    )
    assert f.shape[-2:] == (288, 384)  # 4:3 needs the long side to fit


def test_mask_aware_crop_follows_the_driver():
    masks = torch.zeros(3, 100, 300, dtype=torch.bool)
    masks[:, 40:60, 250:270] = True  # driver near the right border
    top, left = crop_offsets(masks, 100, 100, "mask_aware")
    assert (top, left) == (0, 200)  # clamped window that contains the driver
    assert crop_offsets(torch.zeros(3, 100, 300, dtype=torch.bool), 100, 100, "mask_aware") == (0, 100)
    masks = torch.zeros(3, 100, 300, dtype=torch.bool)
    masks[:, 10:20, 100:120] = True
    assert crop_offsets(masks, 100, 100, "mask_aware")[1] == 60  # centred on x = 110
