"""Mask-path rasterisation: a painted mask translated along a polyline over the driver's frames."""

from __future__ import annotations

import numpy as np
import pytest

from interdyn.app.paths import drag_mask, path_length, path_offsets, translate_mask
from interdyn.errors import InputError


def square(h: int = 40, w: int = 60, top: int = 10, left: int = 5, size: int = 4) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def top_left(frame: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(frame)
    return int(xs.min()), int(ys.min())


def test_whole_path_over_the_clip_by_default() -> None:
    frames = drag_mask(square(), [(7, 12), (33, 12)], num_frames=14)
    assert frames.shape == (14, 40, 60) and frames.dtype == bool
    assert np.array_equal(frames[0], square())  # frame 0 is the painted mask
    assert top_left(frames[-1]) == (5 + 26, 10)  # the last frame reaches the path's end
    xs = [top_left(f)[0] for f in frames]
    assert xs == sorted(xs) and len(set(np.diff(xs))) <= 2  # steady: steps of 2 px (26/13)
    assert all(f.sum() == 16 for f in frames)  # translated, never deformed


def test_polyline_corners_and_arc_length() -> None:
    points = [(0, 0), (10, 0), (10, 10)]
    assert path_length(points) == 20
    offsets = path_offsets(points, num_frames=5)  # 5 px per frame
    np.testing.assert_allclose(offsets, [[0, 0], [5, 0], [10, 0], [10, 5], [10, 10]])


def test_speed_in_pixels_per_frame_and_rest_at_the_end() -> None:
    slow = path_offsets([(0, 0), (100, 0)], num_frames=14, speed=2.0)
    np.testing.assert_allclose(slow[:, 0], np.arange(14) * 2.0)
    fast = path_offsets([(0, 0), (30, 0)], num_frames=14, speed=10.0)
    np.testing.assert_allclose(fast[:, 0], [0, 10, 20] + [30] * 11)  # reaches the end, then rests


def test_clipped_at_the_borders_not_wrapped() -> None:
    frames = drag_mask(square(left=54), [(54, 10), (62, 10)], num_frames=3)  # 4 px per frame to the right
    assert frames[1].sum() == 2 * 4 and top_left(frames[1]) == (58, 10)  # half of it left the frame
    assert frames[2].sum() == 0  # pushed out entirely
    assert not frames[:, :, :50].any()  # nothing reappears on the left
    up = translate_mask(square(top=0, left=0), 0, -2)
    assert up.sum() == 2 * 4 and up[:2, :4].all()


def test_frame_counts() -> None:
    for n in (1, 2, 14, 25):
        assert drag_mask(square(), [(0, 0), (5, 5)], num_frames=n).shape[0] == n


@pytest.mark.parametrize(
    ("mask", "points", "speed", "words"),
    [
        (np.zeros((8, 8), bool), [(0, 0), (4, 4)], None, "paint a mask"),
        (square(), [(3, 3)], None, "at least two points"),
        (square(), [], None, "at least two points"),
        (square(), [(3, 3), (3, 3)], None, "no length"),
        (square(), [(0, 0), (3, 3)], 0.0, "positive"),
        (square(), [(0, 0), (3, 3)], float("nan"), "positive"),
    ],
)
def test_bad_drivers_are_one_sentence(mask, points, speed, words) -> None:
    with pytest.raises(InputError, match=words):
        drag_mask(mask, points, speed=speed)
