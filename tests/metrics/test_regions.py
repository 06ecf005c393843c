"""Region helpers: masked errors, direct / indirect hit roles, role regions, bounded-size copies."""

from __future__ import annotations

import math

import pytest
import torch

from interdyn.metrics.regions import (
    collision_roles,
    hit_roles,
    region_errors,
    role_region,
    shrink_masks,
    shrink_video,
)


def test_region_errors_ignore_pixels_outside_the_region_and_frame_zero():
    real = torch.full((4, 3, 8, 8), 0.5)
    fake = real.clone()
    fake[:, :, :, 4:] = 1.0  # large errors on the right half only
    fake[0] = 0.0  # and everywhere on the conditioning frame
    fake[1:, :, :2, :2] += 0.1  # a small error inside the region
    region = torch.zeros(4, 8, 8, dtype=torch.bool)
    region[:, :4, :4] = True
    out = region_errors(fake, real, region)
    assert out["pixels"] == 3 * 16
    assert out["mse"] == pytest.approx(0.01 * 4 / 16)
    assert out["mae"] == pytest.approx(0.1 * 4 / 16)
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 / 4)))
    whole = region_errors(fake, real, None)
    assert whole["mse"] > 0.1 and whole["pixels"] == 3 * 64
    with_first = region_errors(fake, real, region, skip_first=False)
    assert with_first["mse"] > out["mse"] and with_first["pixels"] == 4 * 16


def test_region_errors_of_an_empty_region_are_nan():
    video = torch.rand(3, 3, 4, 4)
    region = torch.zeros(3, 4, 4, dtype=torch.bool)
    region[0] = True  # only on frame 0, which is not scored
    out = region_errors(video, video * 0.5, region)
    assert math.isnan(out["mse"]) and math.isnan(out["psnr"]) and out["pixels"] == 0
    assert region_errors(video, video, None)["psnr"] == math.inf


def test_collision_roles_follow_the_chain_in_time():
    # driver -> A at frame 3, A -> B at frame 5, B -> C at frame 9
    events = [[3, "driver", "A"], [5, "A", "B"], [9, "C", "B"]]
    assert collision_roles(events) == (["A"], ["B", "C"])
    assert collision_roles(events, max_frame=8) == (["A"], ["B"])  # the clip ends before B hits C
    # B touched A before A was moving: that collision does not pass the push on
    assert collision_roles([[5, "driver", "A"], [2, "A", "B"]]) == (["A"], [])
    # a disc hit by the driver is direct even when another disc reached it first
    assert collision_roles([[1, "driver", 0], [2, 0, 1], [4, "driver", 1]]) == ([0, 1], [])
    # chains within one frame, listed in any order
    assert collision_roles([[4, 1, 2], [4, 0, 1], [4, 0, "driver"]]) == ([0], [1, 2])
    assert collision_roles([[2, 0, 1]]) == ([], [])


def test_hit_roles_from_the_built_in_and_clevrer_metadata():
    synthetic = {
        "objects": ["disc0", "disc1", "disc2"],
        "physics": {"collisions": [[3, "driver", 1], [6, 0, 1], [20, 0, 2]], "positions": [[[0, 0]] * 3]},
    }
    assert hit_roles(synthetic) == (["disc1"], ["disc0", "disc2"])
    assert hit_roles(synthetic, max_frame=10) == (["disc1"], ["disc0"])
    clevrer = {
        "objects": ["0_red_metal_cube", "1_blue_rubber_sphere", "4_gray_metal_cylinder"],
        "entering": [{"object": "4_gray_metal_cylinder", "object_id": 4, "first_visible_frame": 10}],
        "collisions": [{"frame": 30, "object_ids": [4, 1]}, {"frame": 80, "object_ids": [1, 0]}],
        "hit_directly": ["1_blue_rubber_sphere"],
        "hit_indirectly": ["0_red_metal_cube"],
    }
    assert hit_roles(clevrer) == (["1_blue_rubber_sphere"], ["0_red_metal_cube"])
    assert hit_roles(clevrer, max_frame=60) == (["1_blue_rubber_sphere"], [])
    assert hit_roles({"hit_directly": ["a"]}) == (["a"], [])
    assert hit_roles({"label": "no roles"}) is None and hit_roles(None) is None


def test_role_region_unions_dilates_and_excludes():
    objects = torch.zeros(3, 2, 10, 10, dtype=torch.bool)
    objects[0, :, 2, 2] = True
    objects[1, :, 7, 7] = True
    objects[2, :, 5, 5] = True
    names = ["a", "b", "c"]
    region, n = role_region(objects, names, ["a", "b", "missing"])
    assert n == 2 and region.shape == (2, 10, 10) and region.sum() == 2 * 2
    assert not region[:, 5, 5].any()
    grown, _ = role_region(objects, names, ["a"], dilation=1)
    assert grown[0].sum() == 9 and grown[0, 1:4, 1:4].all()
    exclude = torch.zeros(2, 10, 10, dtype=torch.bool)
    exclude[:, 2, 2] = True
    cut, _ = role_region(objects, names, ["a"], dilation=1, exclude=exclude)
    assert cut[0].sum() == 8 and not cut[:, 2, 2].any()
    assert role_region(objects, names, ["nothing"]) == (None, 0)


def test_shrink_keeps_the_aspect_ratio_and_every_driver_pixel():
    video = torch.rand(2, 5, 3, 64, 96)
    small = shrink_video(video, 48)
    assert small.shape == (2, 5, 3, 32, 48) and small.dtype == torch.uint8
    assert shrink_video(video, 128).shape == video.shape  # already small enough
    masks = torch.zeros(5, 64, 96, dtype=torch.bool)
    masks[2, 33, 51] = True
    shrunk = shrink_masks(masks, 48)
    assert shrunk.shape == (5, 32, 48) and shrunk.sum() == 1 and shrunk[2, 16, 25]
