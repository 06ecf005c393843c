"""Motion fidelity (the paper's SSV2 table): do the generated video's point tracks move like the real ones?

For a pair of tracks, ``corr`` is the mean over time of the cosine between their frame-to-frame
displacements; the score averages (mean over generated tracks of the best ``corr`` with a real track)
and (mean over real tracks of the best ``corr`` with a generated track). A time step where both
tracks stand still counts as agreement (1), one moving and one still as 0, so static points give
no NaN and identical videos score 1.

Trackers: :class:`LKTracker` (OpenCV pyramidal Lucas-Kanade on a grid, forward-backward checked;
works offline) and :class:`CoTracker` (``torch.hub``; needs its weights in the hub cache).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from interdyn.errors import WeightsNotFoundError


class Tracker(Protocol):
    """Tracks ``points`` (N, 2) (x, y) of frame 0 through ``video`` (T, H, W, 3) uint8 ->
    ``tracks`` (T, N, 2) and ``visible`` (T, N) bool."""

    def __call__(self, video: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def grid_points(
    height: int, width: int, spacing: int, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """A regular grid of (x, y) query points, optionally restricted to ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box if box is not None else (0, 0, width, height)
    margin = spacing / 2
    xs = np.arange(x0 + margin, x1, spacing)
    ys = np.arange(y0 + margin, y1, spacing)
    if len(xs) == 0 or len(ys) == 0:  # tiny box: its centre
        return np.array([[(x0 + x1) / 2, (y0 + y1) / 2]], dtype=np.float32)
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)


def mask_box(masks: np.ndarray, pad: int = 8) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the union of ``masks`` (T, H, W), padded; None when empty."""
    union = np.asarray(masks).any(0)
    if not union.any():
        return None
    ys, xs = np.nonzero(union)
    h, w = union.shape
    return (
        max(0, xs.min() - pad),
        max(0, ys.min() - pad),
        min(w, xs.max() + 1 + pad),
        min(h, ys.max() + 1 + pad),
    )


class LKTracker:
    """Pyramidal Lucas-Kanade from frame to frame with a forward-backward check: a point whose
    round trip misses by more than ``fb_threshold`` pixels (or that LK loses) stops being visible."""

    def __init__(self, win_size: int = 15, max_level: int = 3, fb_threshold: float = 1.0) -> None:
        import cv2

        self.cv2 = cv2
        self.params = dict(
            winSize=(win_size, win_size),
            maxLevel=max_level,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        )
        self.fb_threshold = fb_threshold

    def __call__(self, video: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv2 = self.cv2
        gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in video]
        t, n = len(gray), len(points)
        tracks = np.zeros((t, n, 2), dtype=np.float32)
        visible = np.zeros((t, n), dtype=bool)
        tracks[0], visible[0] = points, True
        current = points.reshape(-1, 1, 2).astype(np.float32)
        for i in range(1, t):
            nxt, st, _ = cv2.calcOpticalFlowPyrLK(gray[i - 1], gray[i], current, None, **self.params)
            back, st_back, _ = cv2.calcOpticalFlowPyrLK(gray[i], gray[i - 1], nxt, None, **self.params)
            fb_error = np.linalg.norm((back - current).reshape(-1, 2), axis=1)
            ok = (st.ravel() == 1) & (st_back.ravel() == 1) & (fb_error < self.fb_threshold)
            visible[i] = visible[i - 1] & ok
            # lost points stay where they were last seen (their later displacement is 0)
            current = np.where(visible[i][:, None, None], nxt, current)
            tracks[i] = current.reshape(-1, 2)
        return tracks, visible


class CoTracker:
    """CoTracker through ``torch.hub`` (``facebookresearch/co-tracker``); needs the hub cache offline."""

    def __init__(self, model: str = "cotracker2", device: str = "cpu") -> None:
        try:
            self.model = torch.hub.load("facebookresearch/co-tracker", model).to(device).eval()
        except Exception as err:  # noqa: BLE001 - hub errors vary (network, missing cache)
            raise WeightsNotFoundError(
                f"CoTracker ({model}) could not be loaded through torch.hub ({type(err).__name__}: {err}). It needs "
                "internet access once, or a filled torch hub cache; use tracker: lk to track offline."
            ) from None
        self.device = device

    @torch.no_grad()
    def __call__(self, video: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float().to(self.device)
        queries = torch.cat([torch.zeros(len(points), 1), torch.from_numpy(points)], 1)[None].to(self.device)
        tracks, visible = self.model(frames, queries=queries)
        return tracks[0].cpu().numpy(), visible[0].cpu().numpy().astype(bool)


def track_correlations(
    gen: np.ndarray,
    real: np.ndarray,
    gen_visible: np.ndarray | None = None,
    real_visible: np.ndarray | None = None,
    still: float = 0.1,
) -> np.ndarray:
    """``(N_gen, N_real)`` mean over time of displacement cosines (see the module docstring).

    Displacements shorter than ``still`` pixels count as no motion; steps where either point is not
    visible are left out of the mean (a pair with no common visible step scores 0).
    """
    dg = np.diff(gen, axis=0)  # (T-1, Ng, 2)
    dr = np.diff(real, axis=0)
    ng = np.linalg.norm(dg, axis=-1)
    nr = np.linalg.norm(dr, axis=-1)
    moving_g, moving_r = ng >= still, nr >= still
    ug = np.where(moving_g[..., None], dg / np.maximum(ng, 1e-12)[..., None], 0.0)
    ur = np.where(moving_r[..., None], dr / np.maximum(nr, 1e-12)[..., None], 0.0)
    cos = np.einsum("tgc,trc->tgr", ug, ur)
    both_still = (~moving_g)[:, :, None] & (~moving_r)[:, None, :]
    cos = np.where(both_still, 1.0, cos)
    steps = np.ones_like(cos, dtype=bool)
    if gen_visible is not None and real_visible is not None:
        vg = gen_visible[1:] & gen_visible[:-1]
        vr = real_visible[1:] & real_visible[:-1]
        steps = vg[:, :, None] & vr[:, None, :]
    count = steps.sum(0)
    return np.where(count > 0, (cos * steps).sum(0) / np.maximum(count, 1), 0.0)


def motion_fidelity(
    fake: np.ndarray, real: np.ndarray, tracker: Tracker, masks: np.ndarray | None = None, spacing: int = 16
) -> float:
    """Score two videos ``(T, H, W, 3)`` uint8; with ``masks`` (T, H, W) the query points lie in the
    padded bounding box of the driver masks (the interaction region)."""
    h, w = real.shape[1:3]
    box = mask_box(masks) if masks is not None else None
    points = grid_points(h, w, spacing, box)
    tg, vg = tracker(fake, points)
    tr, vr = tracker(real, points)
    # Tracks lost right after the first frame carry no motion; leave them out of both means.
    keep_g = (vg[1:] & vg[:-1]).any(0)
    keep_r = (vr[1:] & vr[:-1]).any(0)
    if not keep_g.any() or not keep_r.any():
        return 0.0
    corr = track_correlations(tg[:, keep_g], tr[:, keep_r], vg[:, keep_g], vr[:, keep_r])
    return float(0.5 * (corr.max(axis=1).mean() + corr.max(axis=0).mean()))
