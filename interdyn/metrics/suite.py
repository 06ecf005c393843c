"""The evaluation protocol: every metric of the paper's table, accumulated clip by clip.

:class:`VideoMetrics` scores generated videos against their ground truth and keeps per-video rows
and I3D features; :func:`summarize` merges the states of all ranks and computes the set-level values
(per-frame metrics averaged per video, then over videos; FVD / KVD between all real clips and all
generated samples). It knows nothing of the model: the evaluation callback and ``interdyn evaluate``
feed it videos. Videos longer than a model's window can also be scored per window (``windows``: each
window's physics error, the seam score, FVD/KVD on the windows; :mod:`interdyn.metrics.windows`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from interdyn.metrics.distances import fid_from_features, polynomial_mmd
from interdyn.metrics.frame_metrics import build_lpips, lpips_per_video, psnr_per_video, ssim_per_video
from interdyn.metrics.motion_fidelity import CoTracker, LKTracker, motion_fidelity
from interdyn.metrics.physics import disc_errors
from interdyn.metrics.windows import Span, check_spans, seam_score, window_clips, window_means
from interdyn.utils.render import to_uint8

Metric = Literal["ssim", "psnr", "lpips", "fvd", "kvd", "motion_fidelity", "physics"]
ALL_METRICS: tuple[str, ...] = get_args(Metric)
PAPER_COLUMNS = (
    ("ssim", "SSIM"),
    ("psnr", "PSNR"),
    ("lpips", "LPIPS"),
    ("fvd", "FVD"),
    ("kvd", "KVD"),
    ("motion_fidelity", "Motion fidelity"),
    ("physics_position_error", "Physics error (px)"),
)

WINDOW_COLUMNS = (("seam_score", "Seam score"), ("seam_score_truth", "Seam score of the truth"))


class VideoMetrics:
    """Accumulates the evaluation of generated videos.

    Args:
        metrics: names from :data:`ALL_METRICS`.
        i3d_weights: FVD/KVD weights file (default: the fetched cache file).
        lpips_backbone, lpips_net: see :func:`interdyn.metrics.frame_metrics.build_lpips`.
        tracker: ``"lk"`` (offline) or ``"cotracker"``; ``track_spacing`` is the query grid spacing;
            ``track_in_mask_box`` restricts query points to the driver's bounding box.
        device: where I3D and LPIPS run.
        windows: the frame spans ``(start, stop)`` of the windows a long video was made of: each row then
            also holds each window's physics error (``physics_position_error_window_<i>``, from 1) and the
            seam score of the sample (``seam_score``) and of its ground truth (``seam_score_truth``), and
            FVD/KVD compare the windows' clips (one per window) instead of whole videos.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ALL_METRICS,
        i3d_weights: str | None = None,
        lpips_backbone: str | None = None,
        lpips_net: str = "alex",
        tracker: str = "lk",
        track_spacing: int = 16,
        track_in_mask_box: bool = True,
        device: torch.device | str = "cpu",
        windows: Sequence[Span] | None = None,
    ) -> None:
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
        self.metrics = tuple(metrics)
        self.device = torch.device(device)
        self.i3d, self.i3d_sha256 = None, None
        if {"fvd", "kvd"} & set(self.metrics):
            from interdyn.metrics.weights import load_i3d

            self.i3d, self.i3d_sha256 = load_i3d(i3d_weights, self.device)
        self.lpips = (
            build_lpips(lpips_net, lpips_backbone).to(self.device) if "lpips" in self.metrics else None
        )
        self.tracker = None
        if "motion_fidelity" in self.metrics:
            self.tracker = LKTracker() if tracker == "lk" else CoTracker(device=str(self.device))
        self.tracker_name, self.track_spacing, self.track_in_mask_box = (
            tracker,
            track_spacing,
            track_in_mask_box,
        )
        self.windows = [(int(a), int(b)) for a, b in windows] if windows else None
        self.rows: list[dict[str, Any]] = []
        self.real_features: list[torch.Tensor] = []
        self.fake_features: list[torch.Tensor] = []
        self.shape: tuple[int, ...] | None = None

    @torch.no_grad()
    def update(
        self,
        real: torch.Tensor,
        fakes: torch.Tensor,
        key: str,
        masks: torch.Tensor | None = None,
        meta: dict | None = None,
        source_indices: Sequence[int] | None = None,
        geometry: Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """Score ``fakes`` (N, T, 3, H, W) against ``real`` (T, 3, H, W), both in [0, 1]; returns the rows."""
        self.shape = tuple(real.shape)
        if self.windows is not None:
            check_spans(self.windows, real.shape[0])
        real, fakes = real.float().to(self.device), fakes.float().to(self.device)
        needs_u8 = "motion_fidelity" in self.metrics or "physics" in self.metrics
        real_u8 = to_uint8(real.permute(0, 2, 3, 1)).cpu().numpy() if needs_u8 else None
        if self.i3d is not None:
            self.real_features.append(self._features(real[None]))
            self.fake_features.append(self._features(fakes))
        rows = []
        for n, fake in enumerate(fakes):
            row: dict[str, Any] = {"key": key, "sample": n}
            if "ssim" in self.metrics:
                row["ssim"] = ssim_per_video(fake, real)
                # the first frame is the conditioning image: an image-to-video model must keep it
                row["ssim_first_frame"] = ssim_per_video(fake[:1], real[:1])
            if "psnr" in self.metrics:
                row["psnr"] = psnr_per_video(fake, real)
            if self.lpips is not None:
                row["lpips"] = lpips_per_video(self.lpips, fake, real)
            fake_u8 = to_uint8(fake.permute(0, 2, 3, 1)).cpu().numpy() if real_u8 is not None else None
            if self.tracker is not None:
                box_masks = masks.cpu().numpy() if (masks is not None and self.track_in_mask_box) else None
                row["motion_fidelity"] = motion_fidelity(
                    fake_u8, real_u8, self.tracker, box_masks, self.track_spacing
                )
            if "physics" in self.metrics and meta is not None and "physics" in meta:
                row |= self._physics(fake_u8, meta, list(source_indices), list(geometry))
            if self.windows is not None:
                row["seam_score"] = seam_score(fake.cpu().numpy(), self.windows)
                row["seam_score_truth"] = seam_score(real.cpu().numpy(), self.windows)
            rows.append(row)
        self.rows += rows
        return rows

    def _features(self, videos: torch.Tensor) -> torch.Tensor:
        """I3D features of ``videos`` ``(N, T, 3, H, W)`` in [0, 1]: ``(N, 400)``, or ``(N, K, 400)`` for
        the ``K`` windows of each (one entry per video either way, so that states merge per video)."""
        if self.windows is None:
            return self.i3d(videos * 2 - 1).cpu()
        # one window of every video at a time (windows may differ in length)
        windows = window_clips(videos.transpose(0, 1), self.windows)
        return torch.stack([self.i3d(w.transpose(0, 1) * 2 - 1).cpu() for w in windows], dim=1)

    def _physics(
        self, frames: np.ndarray, meta: dict, source_indices: list, geometry: list
    ) -> dict[str, float]:
        """The physics columns of one sample: error and found fraction over the video (the discs moved in
        it), and with ``windows`` the error over each window's frames (the same discs)."""
        errors, discs = disc_errors(frames, meta, source_indices, geometry)
        if len(discs) == 0:
            return {"physics_position_error": math.nan, "physics_found": math.nan}
        ok = ~np.isnan(errors)
        row = {
            "physics_position_error": float(errors[ok].mean()) if ok.any() else math.nan,
            "physics_found": float(ok.mean()),
        }
        if self.windows is not None:
            for i, value in enumerate(window_means(errors, self.windows)):
                row[f"physics_position_error_window_{i + 1}"] = value
        return row

    def spawn(self) -> VideoMetrics:
        """A new accumulator with the same settings that shares this one's networks (I3D, LPIPS,
        tracker) and starts with no results: several evaluations of one run load the networks once."""
        twin = copy.copy(self)
        twin.rows, twin.real_features, twin.fake_features, twin.shape = [], [], [], None
        return twin

    def state(self) -> dict[str, Any]:
        """Everything needed to merge this process's results with other ranks' (picklable)."""
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, 400, dtype=torch.float64)  # noqa: E731
        return {
            "rows": self.rows,
            "real": cat(self.real_features),
            "fake": cat(self.fake_features),
            "shape": self.shape,
        }


def window_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The per-window columns found in ``rows`` (``physics_position_error_window_<i>``), by window."""
    prefix = "physics_position_error_window_"
    found = {name for row in rows for name in row if name.startswith(prefix)}
    return sorted(found, key=lambda name: int(name[len(prefix) :]))


def summarize(states: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Merge rank states; per-frame/motion/physics metrics are means over videos (and samples), FVD/KVD
    are computed on the union of the features."""
    rows = [row for state in states for row in state["rows"]]
    results: dict[str, Any] = {}
    for name in (
        "ssim",
        "ssim_first_frame",
        "psnr",
        "lpips",
        "motion_fidelity",
        "physics_position_error",
        "physics_found",
        *window_columns(rows),
        "seam_score",
        "seam_score_truth",
    ):
        values = [r[name] for r in rows if name in r and not math.isnan(r[name])]
        if values:
            results[name] = float(np.mean(values))
    # one feature row per clip (per window of it when scored by windows)
    real = torch.cat([s["real"].flatten(0, -2) for s in states])
    fake = torch.cat([s["fake"].flatten(0, -2) for s in states])
    if "fvd" in metrics and len(real) >= 2 and len(fake) >= 2:
        results["fvd"] = fid_from_features(real, fake)
    if "kvd" in metrics and len(real) >= 2 and len(fake) >= 2:
        results["kvd"] = polynomial_mmd(real, fake)
    results["num_videos"] = len({r["key"] for r in rows})
    results["num_samples"] = len(rows)
    return results


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One :meth:`VideoMetrics.state` from the states of all ranks, ordered by clip key (a key scored on
    several ranks counts once), so that the values, FVD/KVD included, do not depend on which rank scored
    which clip. A state's ``real`` features hold one row per scored clip, its ``fake`` features one row per
    per-video row, both in scoring order (empty without FVD/KVD)."""
    entries: dict[str, dict[str, Any]] = {}
    for state in states:
        rows, with_features = state["rows"], len(state["real"]) > 0
        order = list(dict.fromkeys(row["key"] for row in rows))
        own: dict[str, dict[str, Any]] = {}
        for j, row in enumerate(rows):
            entry = own.setdefault(row["key"], {"rows": [], "fake": []})
            entry["rows"].append(row)
            if with_features:
                entry["fake"].append(state["fake"][j])
        for i, key in enumerate(order):
            if key not in entries:
                entries[key] = {**own[key], "real": state["real"][i] if with_features else None}
    keys = sorted(entries)
    real = [entries[k]["real"] for k in keys if entries[k]["real"] is not None]
    fake = [f for k in keys for f in entries[k]["fake"]]
    empty = torch.zeros(0, 400, dtype=torch.float64)
    return {
        "rows": [row for k in keys for row in entries[k]["rows"]],
        "real": torch.stack(real) if real else empty,
        "fake": torch.stack(fake) if fake else empty,
        "shape": next((s["shape"] for s in states if s["shape"]), None),
    }


def markdown_table(results: dict[str, Any], protocol: dict[str, Any]) -> str:
    """The paper's table layout, one row, plus the protocol under it."""
    columns = [(k, title) for k, title in PAPER_COLUMNS if k in results]
    for name in window_columns([results]):
        columns.append((name, f"Physics error window {name.rsplit('_', 1)[1]} (px)"))
    columns += [(k, title) for k, title in WINDOW_COLUMNS if k in results]
    fmt = lambda v: f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"  # noqa: E731
    lines = [
        "| method | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---|" * len(columns),
        f"| {protocol.get('method', 'interdyn')} | " + " | ".join(fmt(results[k]) for k, _ in columns) + " |",
        "",
        "Protocol: " + ", ".join(f"{k}: {v}" for k, v in protocol.items() if k != "method") + ".",
    ]
    return "\n".join(lines) + "\n"
