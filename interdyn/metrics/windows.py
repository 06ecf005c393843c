"""Scores of a long video made of overlapping windows: each window's share of a per-frame score, and how
visible the seams between windows are.

A window is a span ``(start, stop)`` of frames (stop exclusive); consecutive spans overlap, and the
video shows each later window from where its predecessor stops (the frames before it were made
earlier). Nothing here knows how the windows were made: the caller gives the spans (for a sampled video,
those of :func:`interdyn.models.long.plan_windows`).

The *seam score* is the mean frame-to-frame change across the seams (from the last frame of one window's
part of the video to the first frame of the next one's) over the mean change between the frames next to
them inside the windows: about 1 when the video moves as steadily across its seams as inside its windows
(a real video), above 1 when the picture jumps at the seams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Span = tuple[int, int]


def check_spans(spans: Sequence[Span], num_frames: int) -> None:
    """``ValueError`` unless ``spans`` are non-empty, in order, inside ``num_frames`` frames, each one
    starting inside or right after the previous one (no frame left out)."""
    previous_stop = 0
    for i, (start, stop) in enumerate(spans):
        if not 0 <= start < stop <= num_frames or start > previous_stop or (i and stop <= previous_stop):
            raise ValueError(
                f"window {i} {(start, stop)} does not continue the windows before it in {num_frames} frames"
            )
        previous_stop = stop
    if previous_stop != num_frames:
        raise ValueError(f"the windows {list(spans)} end at frame {previous_stop}, not at {num_frames}")


def seams(spans: Sequence[Span]) -> list[int]:
    """The first frame of each later window's own part of the video (its predecessor's stop): the change
    from frame ``s - 1`` to frame ``s`` crosses a seam."""
    return [int(spans[i - 1][1]) for i in range(1, len(spans))]


def frame_changes(video: np.ndarray) -> np.ndarray:
    """``(T - 1,)``: the mean absolute change of every value from each frame to the next of ``video``
    ``(T, ...)`` (any layout and range; the same for every frame)."""
    frames = np.asarray(video, dtype=np.float64).reshape(len(video), -1)
    return np.abs(np.diff(frames, axis=0)).mean(axis=1)


def seam_score(video: np.ndarray, spans: Sequence[Span], reach: int = 2, eps: float = 1e-6) -> float:
    """Mean frame-to-frame change across the seams of ``spans`` over the mean change inside the windows
    next to them (the ``reach`` changes before and after each seam), NaN with a single window. The
    reference is taken next to each seam, not over the whole video, so that a video whose motion starts or
    dies down (a pushed disc rolling to a stop) still scores about 1 when it has no seams to show. ``eps``
    keeps a still video (no change anywhere) at 1."""
    check_spans(spans, len(video))
    across = [s - 1 for s in seams(spans)]  # change ``i`` is from frame ``i`` to frame ``i + 1``
    if not across:
        return math.nan
    changes = frame_changes(video)
    near = sorted(
        {j for i in across for j in range(i - reach, i + reach + 1) if 0 <= j < len(changes)} - set(across)
    )
    inside = changes[near].mean() if near else 0.0
    return float((changes[across].mean() + eps) / (inside + eps))


def window_means(values: np.ndarray, spans: Sequence[Span]) -> list[float]:
    """The mean of ``values`` ``(T, ...)`` (per frame, NaN where missing) over each window's frames
    ``start..stop - 1``; NaN for a window without a value."""
    values = np.asarray(values, dtype=np.float64)
    check_spans(spans, len(values))
    out = []
    for start, stop in spans:
        part = values[start:stop]
        kept = part[~np.isnan(part)]
        out.append(float(kept.mean()) if kept.size else math.nan)
    return out


def window_clips(video: np.ndarray, spans: Sequence[Span]) -> list[np.ndarray]:
    """Each window's frames of ``video`` ``(T, ...)``, e.g. to score each as a clip of its own (FVD on
    windows of the model's length)."""
    check_spans(spans, len(video))
    return [video[start:stop] for start, stop in spans]
