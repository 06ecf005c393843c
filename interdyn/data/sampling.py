"""Choosing which source frames make a clip.

A clip of ``num_frames`` frames at ``target_fps`` starting at source frame ``s`` takes, for frame ``k``,
the source frame nearest to the timestamp ``s / source_fps + k / target_fps``:
``s + floor(k * source_fps / target_fps + 0.5)``. So 12 -> 7 fps picks offsets 0, 2, 3, 5, 7, 9, 10,
12, 14, 15, 17, 19, 21, 22; 30 -> 7.5 fps every 4th frame. With ``frame_stride`` the offsets are
``0, stride, 2 * stride, ...`` whatever the frame rate (the released demo's stride 2 on 12 fps
videos gives 6 fps).

Windows never run past the end: a start is valid when its last frame exists. Training draws a start
uniformly among the valid ones; validation and test use a fixed window: the first valid start
(``"start"``) or the middle one (``"center"``, rounded down).
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np


def clip_offsets(
    num_frames: int, source_fps: float, target_fps: float | None, frame_stride: int | None = None
) -> np.ndarray:
    """Offsets of the clip's frames from its first source frame."""
    if num_frames < 1:
        raise ValueError("num_frames must be positive")
    k = np.arange(num_frames)
    if frame_stride is not None:
        if frame_stride < 1:
            raise ValueError("frame_stride must be >= 1")
        return k * frame_stride
    if not target_fps or target_fps <= 0 or source_fps <= 0:
        raise ValueError(f"need positive frame rates, got source {source_fps}, target {target_fps}")
    return np.floor(k * (source_fps / target_fps) + 0.5).astype(np.int64)


def valid_starts(num_source_frames: int, offsets: np.ndarray) -> range:
    """Start frames whose whole window lies inside the video (empty if the video is too short)."""
    return range(0, max(0, num_source_frames - int(offsets[-1])))


def choose_start(starts: list[int] | range, mode: str, rng: random.Random | None = None) -> int:
    """Pick a start: ``"random"`` (uniform, training), ``"start"`` or ``"center"`` (fixed, evaluation)."""
    if len(starts) == 0:
        raise ValueError("no valid window")
    if mode == "random":
        return starts[(rng or random).randrange(len(starts))]
    if mode == "start":
        return starts[0]
    if mode == "center":
        return starts[(len(starts) - 1) // 2]
    raise ValueError(f"unknown window mode {mode!r}; use random, start or center")


def effective_fps(source_fps: float, target_fps: float | None, frame_stride: int | None) -> float:
    """The frame rate the clip is played at (the fps SVD is conditioned on)."""
    return source_fps / frame_stride if frame_stride is not None else float(target_fps)


def clip_duration(num_frames: int, fps: float) -> float:
    """Seconds between the first and the last frame."""
    return (num_frames - 1) / fps if fps > 0 else math.inf


def key_seed(seed: int, key: str) -> int:
    """A stable per-clip seed (independent of batch composition, rank and Python's hash salt)."""
    return (seed * 1_000_003 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)) % (2**31)
