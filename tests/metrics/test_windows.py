"""Scores of long videos by window: the seam score and per-window means, alone and in VideoMetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_prep.synthetic import builtin_world, make_video, sample_fields
from interdyn.metrics.suite import VideoMetrics, markdown_table, summarize
from interdyn.metrics.windows import check_spans, frame_changes, seam_score, seams, window_means

# 38 frames in windows of 14 overlapping by 4, as interdyn.models.long.plan_windows cuts them
SPANS = [(0, 14), (10, 24), (20, 34), (24, 38)]


def moving_square(num_frames: int = 38, size: int = 48) -> np.ndarray:
    """A square sliding one pixel per frame: the same change between every two frames."""
    video = np.zeros((num_frames, size, size, 3), np.float32)
    for t in range(num_frames):
        video[t, 10:16, t : t + 6] = 1.0
    return video


def test_seams_are_where_each_later_window_takes_over():
    assert seams(SPANS) == [14, 24, 34]
    assert seams([(0, 14)]) == []


def test_a_steady_video_scores_about_one_and_a_jump_at_the_seams_more():
    smooth = moving_square()
    assert seam_score(smooth, SPANS) == pytest.approx(1.0, abs=0.05)
    jumped = smooth.copy()
    for s in seams(SPANS):  # the picture jumps at every seam: each later window brighter
        jumped[s:] += 0.2
    assert seam_score(jumped, SPANS) > 3.0
    # a jump inside a window next to a seam lowers the score; one far from every seam leaves it at 1
    inside = smooth.copy()
    inside[13:] += 0.2
    assert seam_score(inside, SPANS) < 0.8
    far = smooth.copy()
    far[5:] += 0.2
    assert seam_score(far, SPANS) == pytest.approx(1.0, abs=0.05)
    # motion that dies down: the reference is local, so a video without seams still scores about 1
    stopping = smooth[np.minimum(np.arange(38), 30)]  # still from frame 30 on, across the last seam (34)
    assert seam_score(stopping, SPANS) == pytest.approx(1.0, abs=0.05)


def test_a_still_video_scores_one_and_one_window_has_no_score():
    assert seam_score(np.zeros((38, 4, 4)), SPANS) == pytest.approx(1.0)
    assert math.isnan(seam_score(moving_square(14), [(0, 14)]))


def test_frame_changes_and_window_means():
    changes = frame_changes(np.arange(5, dtype=float)[:, None] * [1.0, 3.0])
    assert changes.tolist() == [2.0, 2.0, 2.0, 2.0]
    values = np.arange(38, dtype=float)
    values[0:3] = np.nan  # missing frames are left out of their windows' means
    means = window_means(values, SPANS)
    assert means == [np.mean(np.arange(3, 14)), np.mean(np.arange(10, 24)), 26.5, 30.5]
    per_disc = np.stack([values, values + 2], axis=1)  # (T, K): every value of the window's frames
    assert window_means(per_disc, SPANS)[1] == np.mean(np.arange(10, 24)) + 1


@pytest.mark.parametrize("spans", [[(0, 14), (16, 38)], [(0, 14), (10, 30)], [(0, 40)], [(2, 14), (10, 38)]])
def test_spans_must_cover_the_video_in_order(spans):
    with pytest.raises(ValueError):
        check_spans(spans, 38)


def long_clip(num_frames: int = 38):
    """A built-in world clip of ``num_frames`` frames at 64 px whose simulation moves a disc."""
    for s in range(50):
        video = make_video(np.random.default_rng([5, s]), builtin_world(64), num_frames, 7.0)
        meta = sample_fields(video, f"synthetic-long-{s:06d}", "long", 7.0, {})["json"]
        positions = np.asarray(meta["physics"]["positions"])
        if (np.linalg.norm(positions[-1] - positions[0], axis=-1) > 4).any():
            return video, meta
    raise AssertionError("no clip with a pushed disc")


def test_video_metrics_by_window():
    video, meta = long_clip()
    real = torch.from_numpy(video["frames"]).permute(0, 3, 1, 2).float() / 255
    # the second sample shifts every frame of the last window's own part: a jump at the last seam
    shifted = real.clone()
    shifted[34:] = torch.roll(real[34:], 8, dims=-1)
    evaluator = VideoMetrics(["physics"], windows=SPANS)
    timing = {"meta": meta, "source_indices": list(range(38)), "geometry": [1.0, 1.0, 0.0, 0.0, 0.0]}
    rows = evaluator.update(real, torch.stack([real, shifted]), "clip", **timing)
    exact, jumped = rows
    for i in range(1, 5):
        assert exact[f"physics_position_error_window_{i}"] < 1.0
    assert jumped["physics_position_error_window_4"] > exact["physics_position_error_window_4"] + 1
    assert jumped["physics_position_error_window_1"] == exact["physics_position_error_window_1"]
    assert exact["seam_score"] == pytest.approx(exact["seam_score_truth"])
    assert jumped["seam_score"] > exact["seam_score"]
    results = summarize([evaluator.state()], ["physics"])
    assert {f"physics_position_error_window_{i}" for i in range(1, 5)} <= set(results)
    assert "Physics error window 4 (px)" in markdown_table(results, {"method": "m"})
    assert "Seam score" in markdown_table(results, {"method": "m"})


def test_windows_must_fit_the_clip():
    evaluator = VideoMetrics(["physics"], windows=SPANS)
    with pytest.raises(ValueError, match="in 20 frames"):
        evaluator.update(torch.zeros(20, 3, 8, 8), torch.zeros(1, 20, 3, 8, 8), "clip")


@pytest.mark.slow  # I3D on CPU
def test_fvd_compares_the_windows_of_the_videos(random_i3d_weights):
    """With windows, I3D sees each window as a clip of its own: one feature row per window, one entry per
    video (so that states of several ranks merge per video)."""
    spans = [(0, 10), (6, 16)]
    evaluator = VideoMetrics(["fvd"], i3d_weights=str(random_i3d_weights), windows=spans)
    real = torch.from_numpy(moving_square(16, 32)).permute(0, 3, 1, 2)
    evaluator.update(real, torch.stack([real, real.flip(-1)]), "clip")
    state = evaluator.state()
    assert state["real"].shape == (1, 2, 400) and state["fake"].shape == (2, 2, 400)
    # the first sample is the truth itself (to the rounding of a batch of two)
    assert torch.allclose(state["fake"][0], state["real"][0], atol=1e-5)
    results = summarize([state], ["fvd"])
    assert math.isfinite(results["fvd"])
