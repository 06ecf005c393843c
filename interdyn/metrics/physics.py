"""Physics error on the built-in dataset: where does a generated video put each pushed disc?

Each disc is found in a frame by its colour (the simulator draws discs in flat palette colours);
its centroid is compared with the simulated position, mapped through the clip's frame selection and
resize/crop. Reported over the discs that the simulation moves (the ones the driver pushes, directly
or through other discs), or over a chosen list of discs: the mean distance in output pixels, and the
fraction of frames where the disc was found at all. :func:`locate_discs` and
:func:`trajectory_distance` give the same comparison as a distance between a video's discs and any
simulated outcome (the counterfactual test on the discs uses it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def expected_positions(
    meta: dict, source_indices: Sequence[int], geometry: Sequence[float], width: int
) -> np.ndarray:
    """Simulated disc centres ``(T, K, 2)`` (x, y) in the clip's output pixel coordinates."""
    scale_y, scale_x, top, left, flipped = (float(g) for g in geometry)
    pos = np.asarray(meta["physics"]["positions"], dtype=np.float64)[np.asarray(source_indices)]
    out = np.empty_like(pos)
    out[..., 0] = pos[..., 0] * scale_x - left
    out[..., 1] = pos[..., 1] * scale_y - top
    if flipped:
        out[..., 0] = width - out[..., 0]
    return out


def locate_by_colour(
    frames: np.ndarray, colour: Sequence[int], tolerance: int = 40, min_pixels: int = 4
) -> np.ndarray:
    """Centroid ``(T, 2)`` of the pixels within ``tolerance`` (per channel) of ``colour``; NaN when fewer
    than ``min_pixels`` match."""
    diff = np.abs(frames.astype(np.int16) - np.asarray(colour, dtype=np.int16)).max(-1)
    out = np.full((frames.shape[0], 2), np.nan)
    for t, hit in enumerate(diff <= tolerance):
        if hit.sum() >= min_pixels:
            ys, xs = np.nonzero(hit)
            out[t] = xs.mean() + 0.5, ys.mean() + 0.5
    return out


def locate_discs(frames: np.ndarray, colours: Sequence[Sequence[int]]) -> np.ndarray:
    """Centres ``(T, K, 2)`` (x, y) of the ``K`` discs of ``colours`` in ``frames`` (T, H, W, 3) uint8, NaN
    where a disc is not found (see :func:`locate_by_colour`)."""
    if len(colours) == 0:
        return np.full((frames.shape[0], 0, 2), np.nan)
    return np.stack([locate_by_colour(frames, colour) for colour in colours], axis=1)


def trajectory_distance(found: np.ndarray, expected: np.ndarray, first_frame: int = 1) -> float:
    """Mean distance in pixels between found disc centres ``(T, K, 2)`` (NaN where not found) and
    expected ones ``(T, K, 2)``, over frames ``first_frame..T-1`` and the discs found there; NaN when
    none is found. For one video against several outcomes the pixels compared are the same (those where
    the video shows a disc), so the distances can be ranked."""
    if found.shape != expected.shape:
        raise ValueError(f"found {found.shape} and expected {expected.shape} positions differ in shape")
    found, expected = found[first_frame:], expected[first_frame:]
    ok = ~np.isnan(found[..., 0])
    if not ok.any():
        return math.nan
    return float(np.linalg.norm(found[ok] - expected[ok], axis=-1).mean())


def has_simulation(meta: dict | None, source_indices: object, geometry: object) -> bool:
    """Whether a clip carries what :func:`disc_positions` needs: its simulation (``meta["physics"]``, the
    built-in dataset's) and the frame selection and geometry that map it onto the clip."""
    return "physics" in (meta or {}) and source_indices is not None and geometry is not None


def disc_positions(
    videos: np.ndarray, meta: dict, source_indices: Sequence[int], geometry: Sequence[float]
) -> dict[str, np.ndarray]:
    """For videos ``(N, T, H, W, 3)`` uint8 of one clip of the built-in dataset: ``found``, where each of
    its discs is in each video ``(N, T, K, 2)`` (NaN where not found), and ``expected``, where its
    simulation puts them ``(T, K, 2)``, both float32 in the videos' pixel coordinates."""
    colours = meta["physics"]["colours"]
    found = np.stack([locate_discs(video, colours) for video in videos])
    expected = expected_positions(meta, source_indices, geometry, videos.shape[3])
    return {"found": found.astype(np.float32), "expected": expected.astype(np.float32)}


def disc_errors(
    frames: np.ndarray,
    meta: dict,
    source_indices: Sequence[int],
    geometry: Sequence[float],
    moved_threshold: float = 2.0,
    discs: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and disc: the distance in output pixels between where ``frames`` (T, H, W, 3) uint8 show
    each measured disc (by its colour) and where the simulation in ``meta`` puts it, ``(T, K)`` with NaN
    where the disc is not found, and the indices ``(K,)`` of the measured discs: those that move more than
    ``moved_threshold`` pixels over the clip or, when given, ``discs``."""
    expected = expected_positions(meta, source_indices, geometry, frames.shape[2])
    if discs is None:
        travel = np.linalg.norm(expected[-1] - expected[0], axis=-1)
        discs = np.nonzero(travel > moved_threshold)[0]
    chosen = np.asarray([int(k) for k in discs], dtype=np.int64)
    errors = np.full((frames.shape[0], len(chosen)), np.nan)
    colours = meta["physics"]["colours"]
    for j, k in enumerate(chosen):
        seen = locate_by_colour(frames, colours[k])
        errors[:, j] = np.linalg.norm(seen - expected[:, k], axis=-1)
    return errors, chosen


def physics_error(
    frames: np.ndarray,
    meta: dict,
    source_indices: Sequence[int],
    geometry: Sequence[float],
    moved_threshold: float = 2.0,
    discs: Sequence[int] | None = None,
) -> dict[str, float]:
    """Error of ``frames`` (T, H, W, 3) uint8 against the simulation stored in ``meta``, over the discs
    that move more than ``moved_threshold`` output pixels in the clip or, when given, over the disc
    indices ``discs`` (whether they moved or not).

    Returns ``position_error`` (mean pixel distance over those discs and the frames where they were
    found by colour), ``found`` (fraction of those disc-frames where the disc was found) and the number
    of discs measured: ``moved_objects``, or ``objects`` for a given list. NaN errors without discs.
    """
    count = "moved_objects" if discs is None else "objects"
    errors, chosen = disc_errors(frames, meta, source_indices, geometry, moved_threshold, discs)
    if len(chosen) == 0:
        return {"position_error": math.nan, "found": math.nan, count: 0.0}
    ok = ~np.isnan(errors)
    error = float(errors[ok].mean()) if ok.any() else math.nan
    return {"position_error": error, "found": float(ok.mean()), count: float(len(chosen))}
