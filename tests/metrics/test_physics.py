"""Physics error of the built-in dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_prep.synthetic import World, make_video, sample_fields
from interdyn.metrics.physics import expected_positions, locate_discs, physics_error, trajectory_distance


def clip_with_pushed_disc(seed: int = 0):
    for s in range(seed, seed + 50):
        video = make_video(np.random.default_rng([11, s]), World(height=64, width=64), 16, 8.0)
        meta = sample_fields(video, f"synthetic-test-{s:06d}", "test", 8.0, {})["json"]
        positions = np.asarray(meta["physics"]["positions"])
        if (np.linalg.norm(positions[-1] - positions[0], axis=-1) > 4).any():
            return video, meta
    raise AssertionError("no clip with a pushed disc")


def test_ground_truth_scores_near_zero():
    video, meta = clip_with_pushed_disc()
    indices, geometry = list(range(16)), [1.0, 1.0, 0.0, 0.0, 0.0]
    result = physics_error(video["frames"], meta, indices, geometry)
    assert result["moved_objects"] >= 1
    assert result["position_error"] < 1.0 and result["found"] > 0.9


def test_error_grows_when_a_disc_is_displaced():
    video, meta = clip_with_pushed_disc()
    indices, geometry = list(range(16)), [1.0, 1.0, 0.0, 0.0, 0.0]
    frames = video["frames"].copy()
    positions = np.asarray(meta["physics"]["positions"])
    k = int(np.argmax(np.linalg.norm(positions[-1] - positions[0], axis=-1)))
    colour = np.asarray(meta["physics"]["colours"][k], dtype=np.uint8)
    for t in range(len(frames)):  # move disc k 6 px to the right in every frame
        hit = np.all(frames[t] == colour, axis=-1)
        frames[t][hit] = frames[t][0, 0]
        frames[t][np.roll(hit, 6, axis=1)] = colour
    base = physics_error(video["frames"], meta, indices, geometry)["position_error"]
    moved = physics_error(frames, meta, indices, geometry)["position_error"]
    assert moved > base + 2


def test_positions_follow_the_clip_geometry():
    meta = {"physics": {"positions": [[[10.0, 20.0]], [[12.0, 20.0]]]}}
    out = expected_positions(meta, [1], [2.0, 2.0, 4.0, 8.0, 0.0], width=100)
    assert out[0, 0].tolist() == [16.0, 36.0]
    flipped = expected_positions(meta, [1], [2.0, 2.0, 4.0, 8.0, 1.0], width=100)
    assert flipped[0, 0].tolist() == [84.0, 36.0]
    static = {"physics": {"positions": [[[10.0, 20.0]]] * 3, "colours": [[255, 0, 0]]}}
    assert math.isnan(
        physics_error(np.zeros((3, 8, 8, 3), np.uint8), static, [0, 1, 2], [1, 1, 0, 0, 0])["position_error"]
    )


def test_physics_error_over_chosen_discs_measures_only_those():
    frames = np.zeros((3, 20, 30, 3), dtype=np.uint8)
    positions = [[[10.0, 8.0], [25.0, 15.0]] for _ in range(3)]
    for t in range(3):
        frames[t, 6:10, 8 + t : 12 + t] = (200, 0, 0)  # disc 0, drifting 1 px right per frame
    meta = {"physics": {"positions": positions, "colours": [[200, 0, 0], [0, 0, 200]]}}
    out = physics_error(frames, meta, [0, 1, 2], [1.0, 1.0, 0, 0, 0.0], discs=[0])
    assert out["found"] == 1.0 and out["position_error"] == pytest.approx(1.0)  # mean of 0, 1, 2
    assert out["objects"] == 1.0
    missing = physics_error(frames, meta, [0, 1, 2], [1.0, 1.0, 0, 0, 0.0], discs=[1])  # disc 1 is not drawn
    assert missing["found"] == 0.0 and math.isnan(missing["position_error"])
    assert math.isnan(physics_error(frames, meta, [0, 1, 2], [1.0, 1.0, 0, 0, 0.0], discs=[])["found"])
    # without a list, only discs the simulation moves count: neither disc moves here
    assert physics_error(frames, meta, [0, 1, 2], [1.0, 1.0, 0, 0, 0.0])["moved_objects"] == 0.0


def test_trajectory_distance_compares_the_found_discs_from_frame_one():
    """The truth's discs lie on the simulation; a copy shifted 5 px is 5 px away; frame 0 (shared by every
    path) and discs that are not found do not count; nothing found is NaN."""
    video, meta = clip_with_pushed_disc()
    colours = meta["physics"]["colours"]
    expected = np.asarray(meta["physics"]["positions"])
    found = locate_discs(video["frames"], colours)
    assert found.shape == expected.shape and trajectory_distance(found, expected) < 1.0
    shifted = found + [5.0, 0.0]
    shifted[0] += 100.0  # frame 0 is not compared
    shifted[1:, 0] = np.nan  # disc 0 not found after frame 0
    assert trajectory_distance(shifted, found) == pytest.approx(5.0)
    assert math.isnan(trajectory_distance(np.full_like(found, np.nan), expected))
    assert locate_discs(video["frames"], []).shape == (len(found), 0, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        trajectory_distance(found[:, :1], expected)
