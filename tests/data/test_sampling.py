"""Frame selection by timestamp, against hand-worked offsets."""

from __future__ import annotations

import random

import pytest

from interdyn.data.sampling import choose_start, clip_offsets, effective_fps, valid_starts


@pytest.mark.parametrize(
    "source, target, stride, expected",
    [
        # 12 -> 7: k * 12/7 = 0, 1.71, 3.43, 5.14, 6.86, 8.57, 10.29, 12, 13.71, 15.43, 17.14, 18.86, 20.57, 22.29
        (12.0, 7.0, None, [0, 2, 3, 5, 7, 9, 10, 12, 14, 15, 17, 19, 21, 22]),
        # 25 -> 7: k * 3.571 = 0, 3.57, 7.14, 10.71, 14.29, 17.86, 21.43, 25, 28.57, 32.14, 35.71, 39.29, 42.86, 46.43
        (25.0, 7.0, None, [0, 4, 7, 11, 14, 18, 21, 25, 29, 32, 36, 39, 43, 46]),
        # 12 fps with stride 2 (the released demo): 6 fps
        (12.0, None, 2, list(range(0, 28, 2))),
        # 30 -> 7.5: exactly every 4th frame
        (30.0, 7.5, None, list(range(0, 56, 4))),
        # 7 -> 7: every frame
        (7.0, 7.0, None, list(range(14))),
    ],
)
def test_offsets(source, target, stride, expected):
    assert clip_offsets(14, source, target, stride).tolist() == expected


def test_effective_fps():
    assert effective_fps(12.0, None, 2) == 6.0
    assert effective_fps(12.0, 7.0, None) == 7.0


def test_valid_starts_respect_the_end():
    offsets = clip_offsets(14, 12.0, 7.0)  # last offset 22 -> needs 23 frames
    assert list(valid_starts(23, offsets)) == [0]
    assert list(valid_starts(22, offsets)) == []
    assert list(valid_starts(30, offsets)) == list(range(8))


def test_windows_never_run_past_the_end():
    rng = random.Random(0)
    for _ in range(500):
        source = rng.choice([6.0, 12.0, 15.0, 24.0, 25.0, 29.97, 30.0, 60.0])
        target = rng.choice([4.0, 6.0, 7.0, 7.5, 8.0])
        n = rng.randint(1, 200)
        offsets = clip_offsets(14, source, target)
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
