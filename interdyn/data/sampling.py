"""Choosing which source frames make a clip.

What "7 FPS" means here: the paper's clips are "14 frames at 7 FPS", which is SVD's fps=7 convention (SVD
conditions on ``fps - 1``, fps id 6, which the authors pass). The authors' released loader does not resample
to 7 frames per second: it takes every ``fps // 6``-th source frame, i.e. every 2nd frame of SSV2's 12 fps
videos (6 frames per second, 14 frames over 2.17 s). This project does the same by default.

``frame_sampling`` (default ``"uniform"``) decides how a clip at ``target_fps`` is cut from a video at
``source_fps``:

- ``"uniform"``: every ``stride``-th frame, with the integer stride whose rate ``source_fps / stride`` is
  nearest ``target_fps`` (12 fps -> stride 2, 6 fps; 25 fps -> 4, 6.25 fps; 30 fps -> 4, 7.5 fps). Motion
  advances by the same time step between every two frames; the rate actually played is recorded with each
  clip (:func:`effective_fps`).
- ``"timestamp"``: for frame ``k`` the source frame nearest the timestamp ``k / target_fps``:
  ``floor(k * source_fps / target_fps + 0.5)``. Exactly 7 frames per second on average, but from 12 fps it
  takes offsets 0, 2, 3, 5, 7, 9, 10, 12, ...: uneven 1- and 2-frame gaps, jittery motion.

An explicit ``frame_stride`` overrides both. Windows never run past the end: a start is valid when its last
frame exists. Training draws a start uniformly among the valid ones; validation and test use a fixed window:
the first valid start (``"start"``) or the middle one (``"center"``, rounded down).
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np

FRAME_SAMPLINGS = ("uniform", "timestamp")


def _check_rates(source_fps: float, target_fps: float | None) -> None:
    if not target_fps or not target_fps > 0 or not source_fps > 0:
        raise ValueError(f"need positive frame rates, got source {source_fps}, target {target_fps}")


def uniform_stride(source_fps: float, target_fps: float) -> int:
    """The integer stride whose rate ``source_fps / stride`` is nearest ``target_fps``. A tie (24 fps: 8 or 6
    fps) goes to the larger stride, which is what the authors' ``fps // 6`` gives there."""
    _check_rates(source_fps, target_fps)
    ratio = source_fps / target_fps
    candidates = {max(1, math.floor(ratio)), max(1, math.ceil(ratio))}
    return min(candidates, key=lambda s: (abs(source_fps / s - target_fps), -s))


def clip_stride(
    source_fps: float, target_fps: float | None, frame_stride: int | None, frame_sampling: str = "uniform"
) -> int | None:
    """The stride between the clip's source frames, or None for timestamp picking."""
    if frame_sampling not in FRAME_SAMPLINGS:
        raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {frame_sampling!r}")
    if frame_stride is not None:
        if frame_stride < 1:
            raise ValueError("frame_stride must be >= 1")
        return int(frame_stride)
    _check_rates(source_fps, target_fps)
    return uniform_stride(source_fps, float(target_fps)) if frame_sampling == "uniform" else None


def clip_offsets(
    num_frames: int,
    source_fps: float,
    target_fps: float | None,
    frame_stride: int | None = None,
    frame_sampling: str = "uniform",
) -> np.ndarray:
    """Offsets of the clip's frames from its first source frame (see the module docstring)."""
    if num_frames < 1:
        raise ValueError("num_frames must be positive")
    k = np.arange(num_frames)
    stride = clip_stride(source_fps, target_fps, frame_stride, frame_sampling)
    if stride is not None:
        return k * stride
    return np.floor(k * (source_fps / float(target_fps)) + 0.5).astype(np.int64)


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


def effective_fps(
    source_fps: float, target_fps: float | None, frame_stride: int | None, frame_sampling: str = "uniform"
) -> float:
    """The frame rate the clip is actually played at: ``source_fps / stride`` for strided clips, the target
    for timestamp picking. (The model is conditioned on SVD's fps id, 6, whatever this is.)"""
    stride = clip_stride(source_fps, target_fps, frame_stride, frame_sampling)
    return source_fps / stride if stride is not None else float(target_fps)


def describe_timing(
    source_fps: float, target_fps: float | None, frame_stride: int | None, frame_sampling: str = "uniform"
) -> str:
    """One phrase saying how a clip is cut, e.g. ``"every 2nd frame of 12 fps = 6 fps (uniform stride nearest
    7 FPS)"``."""
    stride = clip_stride(source_fps, target_fps, frame_stride, frame_sampling)
    if stride is None:
        return f"{target_fps:g} fps by timestamp (nearest source frame, uneven steps from {source_fps:g} fps)"
    nth = {1: "every", 2: "every 2nd", 3: "every 3rd"}.get(stride, f"every {stride}th")
    why = "--frame_stride" if frame_stride is not None else f"uniform stride nearest {target_fps:g} FPS"
    return f"{nth} frame of {source_fps:g} fps = {source_fps / stride:g} fps ({why})"


def key_seed(seed: int, key: str) -> int:
    """A stable per-clip seed (independent of batch composition, rank and Python's hash salt)."""
    return (seed * 1_000_003 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)) % (2**31)
