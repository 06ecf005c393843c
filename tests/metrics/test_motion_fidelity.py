"""Motion fidelity and the Lucas-Kanade tracker."""

from __future__ import annotations

import math

import numpy as np

from interdyn.metrics.motion_fidelity import (
    LKTracker,
    grid_points,
    mask_box,
    motion_fidelity,
    track_correlations,
)


def textured_video(shift: tuple[float, float], frames: int = 8, size: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth random texture translated by ``shift`` (x, y) pixels per frame."""
    rng = np.random.default_rng(seed)
    big = size * 2
    noise = rng.uniform(0, 255, (big // 8, big // 8, 3))
    texture = np.kron(noise, np.ones((8, 8, 1)))
    import cv2

    texture = cv2.GaussianBlur(texture, (0, 0), 3)
    out = []
    for t in range(frames):
        m = np.float32([[1, 0, -size / 2 + shift[0] * t], [0, 1, -size / 2 + shift[1] * t]])
        out.append(cv2.warpAffine(texture, m, (size, size), flags=cv2.INTER_LINEAR))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def test_lk_recovers_a_known_shift():
    video = textured_video((3.0, -2.0))
    points = grid_points(96, 96, 16, (24, 24, 72, 72))
    tracks, visible = LKTracker()(video, points)
    steps = np.diff(tracks, axis=0)[visible[1:]]
    np.testing.assert_allclose(np.median(steps, axis=0), [3.0, -2.0], atol=0.15)
    assert visible[-1].mean() > 0.8


def test_identical_videos_score_one():
    video = textured_video((2.0, 1.0))
    assert math.isclose(motion_fidelity(video, video, LKTracker()), 1.0, abs_tol=1e-6)


def test_reversed_motion_scores_low():
    forward = textured_video((2.0, 0.0))
    backward = textured_video((-2.0, 0.0))
    assert motion_fidelity(backward, forward, LKTracker()) < 0.2


def test_static_video_is_finite_and_differs_from_moving():
    static = textured_video((0.0, 0.0))
    moving = textured_video((2.0, 1.0))
    score = motion_fidelity(static, moving, LKTracker())
    assert np.isfinite(score) and score < 0.5
    assert math.isclose(motion_fidelity(static, static, LKTracker()), 1.0)


def test_correlation_rules_for_still_and_invisible_points():
    still = np.zeros((3, 1, 2))
    moving = np.cumsum(np.ones((3, 1, 2)), axis=0)
    assert track_correlations(still, still)[0, 0] == 1.0  # both still: agreement
    assert track_correlations(still, moving)[0, 0] == 0.0  # one still, one moving
    assert math.isclose(track_correlations(moving, -moving)[0, 0], -1.0)
    hidden = np.zeros((3, 1), dtype=bool)
    assert track_correlations(moving, moving, hidden, hidden)[0, 0] == 0.0  # no common visible step


def test_points_can_be_restricted_to_the_mask_box():
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[:, 20:30, 40:50] = True
    box = mask_box(masks, pad=0)
    assert box == (40, 20, 50, 30)
    points = grid_points(64, 64, 4, box)
    assert (points[:, 0] >= 40).all() and (points[:, 0] < 50).all() and (points[:, 1] >= 20).all()
    assert mask_box(np.zeros((2, 8, 8), dtype=bool)) is None
