"""Mask paths: a painted mask dragged along a polyline, rasterised to the driver's frames.

The mask is translated, not deformed: frame ``t`` shows the painted mask moved by the offset between the
path's first point and the point reached after ``t`` frames at the chosen speed. Movement stops at the
path's end; pixels moved past a border are dropped (never wrapped). Pure numpy, no UI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interdyn.errors import InputError

Point = Sequence[float]


def path_length(points: Sequence[Point]) -> float:
    """Length in pixels of the polyline through ``points`` (``(x, y)`` pairs)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return float(np.hypot(*np.diff(pts, axis=0).T).sum()) if len(pts) > 1 else 0.0


def path_offsets(points: Sequence[Point], num_frames: int = 14, speed: float | None = None) -> np.ndarray:
    """``(num_frames, 2)`` float ``(dx, dy)``: where the mask is, relative to the path's first point.

    ``speed`` is in pixels per frame along the path; ``None`` covers the whole path over the clip (the
    last frame reaches its end). A faster speed reaches the end earlier and rests there."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if num_frames < 1:
        raise InputError(f"a driver needs at least one frame, got {num_frames}.")
    if len(pts) < 2:
        raise InputError("draw a path: click at least two points on the image.")
    segments = np.hypot(*np.diff(pts, axis=0).T)
    total = float(segments.sum())
    if total == 0.0:
        raise InputError("the path has no length: click points at different places on the image.")
    if speed is None:
        speed = total / max(1, num_frames - 1)
    if not np.isfinite(speed) or speed <= 0:
        raise InputError(f"the speed must be a positive number of pixels per frame, got {speed:g}.")
    distance = np.minimum(np.arange(num_frames) * float(speed), total)
    cumulative = np.concatenate([[0.0], np.cumsum(segments)])
    # The position at each arc length, segment by segment (np.interp on each coordinate).
    x = np.interp(distance, cumulative, pts[:, 0])
    y = np.interp(distance, cumulative, pts[:, 1])
    return np.stack([x - pts[0, 0], y - pts[0, 1]], axis=1)


def translate_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` (H, W) shifted by whole pixels (``dx`` right, ``dy`` down); what leaves the frame is lost."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[dst_y, dst_x] = mask[src_y, src_x]
    return out


def drag_mask(
    mask: np.ndarray, points: Sequence[Point], num_frames: int = 14, speed: float | None = None
) -> np.ndarray:
    """``(num_frames, H, W)`` bool: ``mask`` (H, W) translated along the polyline ``points`` (``(x, y)``
    in the mask's pixels) at ``speed`` pixels per frame (``None``: the whole path over the clip)."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise InputError(f"a painted mask is one (height, width) image, got shape {mask.shape}.")
    if not mask.any():
        raise InputError("paint a mask first: brush over the object (or hand) that should move.")
    offsets = np.rint(path_offsets(points, num_frames, speed)).astype(int)
    return np.stack([translate_mask(mask, int(dx), int(dy)) for dx, dy in offsets])
