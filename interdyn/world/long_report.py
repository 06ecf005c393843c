"""`make demo-long`'s report: one table of long-video scores (physics error per window, over the whole
video, the seam score) with one row per model, and pictures of one long clip (a contact sheet of every
frame and a side-by-side MP4).

The table reads the results of ``interdyn evaluate`` on long clips (:func:`interdyn.commands.evaluate.evaluate`
with windows): ``physics_position_error_window_<i>``, ``physics_position_error``, ``physics_found``,
``seam_score`` and, when FVD ran, ``fvd`` (on the 14-frame windows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interdyn.utils.files import write_atomic


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return fmt.format(value)


def later_over_first(results: Mapping[str, Any], windows: int) -> float:
    """The mean physics error of windows 2 and later over window 1's (NaN when either is missing)."""
    first = results.get("physics_position_error_window_1", math.nan)
    later = [results.get(f"physics_position_error_window_{i}", math.nan) for i in range(2, windows + 1)]
    later = [v for v in later if math.isfinite(v)]
    if not later or not math.isfinite(first) or first <= 0:
        return math.nan
    return float(np.mean(later)) / first


def long_table(
    results: Mapping[str, Mapping[str, Any]],
    windows: Sequence[tuple[int, int]],
    seconds: Mapping[str, float] | None = None,
) -> str:
    """A markdown table, one row per model (``results``: its evaluation results by row title): physics
    error (px) in each window of ``windows`` (frame spans) and over the whole video, the fraction of
    disc-frames where the pushed discs were found, windows 2+ over window 1, the seam score, FVD on the
    windows (when scored) and, from ``seconds``, the row's sampling time."""
    fvd = any("fvd" in r for r in results.values())
    head = [f"window {i + 1} (frames {a}-{b - 1})" for i, (a, b) in enumerate(windows)]
    head += ["whole video", "discs found", "windows 2+ / window 1", "seam score"]
    head += ["FVD (windows)"] if fvd else []
    head += ["sampling (s)"] if seconds is not None else []
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for title, r in results.items():
        cells = [_cell(r.get(f"physics_position_error_window_{i + 1}")) for i in range(len(windows))]
        cells += [
            _cell(r.get("physics_position_error")),
            _cell(r.get("physics_found")),
            _cell(later_over_first(r, len(windows))),
            _cell(r.get("seam_score")),
        ]
        cells += [_cell(r.get("fvd"), "{:.1f}")] if fvd else []
        cells += [_cell((seconds or {}).get(title), "{:.0f}")] if seconds is not None else []
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def long_pictures(
    out: Path, control: np.ndarray, videos: Mapping[str, np.ndarray], truth: np.ndarray, fps: float = 7.0
) -> list[Path]:
    """Write ``long_contact_sheet.png`` (one row per picture: the control, each model's video, the truth;
    every frame) and ``long_side_by_side.mp4`` (the same side by side, twice the size) into ``out``. All
    videos ``(T, H, W, 3)`` uint8."""
    from interdyn.data.video import encode_video
    from interdyn.utils.render import contact_sheet, labelled_row, png_bytes
    from interdyn.world.report import even_frames, zoom_frames

    rows = [control, *videos.values(), truth]
    labels = ["control", *videos, "ground truth"]
    sheet = write_atomic(out / "long_contact_sheet.png", png_bytes(contact_sheet(rows, labels)))
    side = labelled_row([zoom_frames(v) for v in rows], labels)
    movie = write_atomic(out / "long_side_by_side.mp4", encode_video(even_frames(side), fps=fps))
    return [sheet, movie]
