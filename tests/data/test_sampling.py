"""Frame selection by timestamp, against hand-worked offsets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from interdyn.data.sampling import (
    choose_start,
    clip_offsets,
    describe_timing,
    effective_fps,
    uniform_stride,
    valid_starts,
)


@pytest.mark.parametrize(
    "source, target, stride, expected",
    [
        # 12 -> 7 by timestamp: k * 12/7 = 0, 1.71, 3.43, 5.14, 6.86, 8.57, 10.29, 12, 13.71, 15.43, ...
        (12.0, 7.0, None, [0, 2, 3, 5, 7, 9, 10, 12, 14, 15, 17, 19, 21, 22]),
        # 25 -> 7: k * 3.571 = 0, 3.57, 7.14, 10.71, 14.29, 17.86, 21.43, 25, 28.57, 32.14, 35.71, 39.29, 42.86, 46.43
        (25.0, 7.0, None, [0, 4, 7, 11, 14, 18, 21, 25, 29, 32, 36, 39, 43, 46]),
        # an explicit stride wins: 12 fps with stride 2
        (12.0, None, 2, list(range(0, 28, 2))),
        # 30 -> 7.5: exactly every 4th frame
        (30.0, 7.5, None, list(range(0, 56, 4))),
        # 7 -> 7: every frame
        (7.0, 7.0, None, list(range(14))),
    ],
)
def test_timestamp_offsets(source, target, stride, expected):
    assert clip_offsets(14, source, target, stride, frame_sampling="timestamp").tolist() == expected


@pytest.mark.parametrize(
    "source, stride, rate",
    [
        (12.0, 2, 6.0),  # SSV2: every 2nd frame, as the authors' loader (fps // 6) takes it
        (24.0, 4, 6.0),  # 8 and 6 fps are equally near 7: the larger stride, as the authors' fps // 6
        (25.0, 4, 6.25),  # 6.25 is nearer 7 than 25/3 = 8.33
        (30.0, 4, 7.5),
        (29.97, 4, 7.4925),
        (7.0, 1, 7.0),
        (5.0, 1, 5.0),  # slower than the target: every frame
    ],
)
def test_default_is_the_uniform_stride_nearest_the_target(source, stride, rate):
    assert uniform_stride(source, 7.0) == stride
    assert clip_offsets(14, source, 7.0).tolist() == list(range(0, 14 * stride, stride))
    assert effective_fps(source, 7.0, None) == pytest.approx(rate)


def test_uniform_steps_never_jitter():
    """The default never mixes 1- and 2-frame gaps (what timestamp picking does from 12 fps)."""
    for source in (6.0, 10.0, 12.0, 15.0, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0):
        assert len(set(np.diff(clip_offsets(14, source, 7.0)).tolist())) == 1
    assert len(set(np.diff(clip_offsets(14, 12.0, 7.0, frame_sampling="timestamp")).tolist())) == 2


def test_effective_fps_and_timing_note():
    assert effective_fps(12.0, None, 2) == 6.0
    assert effective_fps(12.0, 7.0, None, "timestamp") == 7.0
    assert (
        describe_timing(12.0, 7.0, None) == "every 2nd frame of 12 fps = 6 fps (uniform stride nearest 7 FPS)"
    )
    assert "by timestamp" in describe_timing(12.0, 7.0, None, "timestamp")
    with pytest.raises(ValueError, match="frame_sampling"):
        clip_offsets(14, 12.0, 7.0, frame_sampling="nearest")


def test_valid_starts_respect_the_end():
    offsets = clip_offsets(14, 12.0, 7.0, frame_sampling="timestamp")  # last offset 22 -> needs 23 frames
    assert list(valid_starts(23, offsets)) == [0]
    assert list(valid_starts(22, offsets)) == []
    assert list(valid_starts(30, offsets)) == list(range(8))


def test_windows_never_run_past_the_end():
    rng = random.Random(0)
    for _ in range(500):
        source = rng.choice([6.0, 12.0, 15.0, 24.0, 25.0, 29.97, 30.0, 60.0])
        target = rng.choice([4.0, 6.0, 7.0, 7.5, 8.0])
        n = rng.randint(1, 200)
        offsets = clip_offsets(14, source, target, frame_sampling=rng.choice(["uniform", "timestamp"]))
        starts = valid_starts(n, offsets)
        for mode in ("random", "start", "center"):
            if len(starts):
                assert choose_start(starts, mode, rng) + offsets[-1] <= n - 1
        assert all(s + offsets[-1] <= n - 1 for s in starts)


def test_fixed_windows():
    starts = range(3, 10)
    assert choose_start(starts, "start") == 3
    assert choose_start(starts, "center") == 6
    with pytest.raises(ValueError):
        choose_start([], "center")
