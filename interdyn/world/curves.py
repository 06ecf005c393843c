"""Loss curves of the world's training runs as PNG, drawn with PIL from TensorBoard event files.

    python -m interdyn.world.curves --out docs/world/curves.png \\
        "VAE train/mse=runs/world_vae" "UNet train/loss=runs/world_base" "branch train/loss=runs/world_branch"
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from interdyn.utils.files import write_atomic
from interdyn.utils.render import chart_canvas, png_bytes


def read_scalars(run: str | Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``tag`` over every version folder of a TensorBoard run, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    folders = sorted(Path(run).glob("version_*")) or [Path(run)]
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags().get("scalars", []):
            points.update({e.step: e.value for e in events.Scalars(tag)})
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    """Running mean over ``window`` points (shorter at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def plot(steps: np.ndarray, values: np.ndarray, title: str, size: tuple[int, int] = (360, 240)) -> np.ndarray:
    """One panel: raw values (grey) and their running mean (white) on a log y axis -> ``(H, W, 3)`` uint8."""
    w, h = size
    image, draw, font = chart_canvas(size, title, background=(24, 24, 24), ink=(235, 235, 235))
    left, right, top, bottom = 46, 8, 22, 20
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        draw.text((left, h // 2), "no data", fill=(235, 235, 235), font=font)
        return np.asarray(image)
    steps, values = steps[ok], values[ok]
    logs = np.log10(values)
    lo, hi = float(logs.min()), float(logs.max())
    hi = hi if hi > lo else lo + 1.0
    x0, x1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def xy(s: float, v: float) -> tuple[float, float]:
        return (
            left + (s - x0) / (x1 - x0) * (w - left - right),
            top + (hi - v) / (hi - lo) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline=(90, 90, 90))
    for v in (lo, (lo + hi) / 2, hi):
        _, y = xy(x0, v)
        draw.text((2, y - 5), f"{10**v:.3g}", fill=(170, 170, 170), font=font)
    draw.text((left, h - bottom + 4), f"step {int(x0)}", fill=(170, 170, 170), font=font)
    draw.text((w - right - 60, h - bottom + 4), f"{int(x1)}", fill=(170, 170, 170), font=font)
    draw.line([xy(s, v) for s, v in zip(steps, logs, strict=True)], fill=(110, 110, 110), width=1)
    smoothed = np.log10(smooth(values, max(2, len(values) // 30)))
    draw.line([xy(s, v) for s, v in zip(steps, smoothed, strict=True)], fill=(240, 240, 240), width=2)
    return np.asarray(image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("panels", nargs="+", help="TITLE TAG=RUN_FOLDER, e.g. 'VAE train/mse=runs/world_vae'")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    panels = []
    for spec in args.panels:
        head, sep, run = spec.rpartition("=")
        title, _, tag = head.rpartition(" ")
        if not sep or not tag:
            parser.error(f"a panel is 'TITLE TAG=RUN', got {spec!r}")
        steps, values = read_scalars(run, tag)
        panels.append(plot(steps, values, f"{title} {tag}".strip()))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    ph, pw, _ = panels[0].shape
    sheet = np.full((rows * ph, columns * pw, 3), 24, dtype=np.uint8)
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        sheet[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = panel
    write_atomic(args.out, png_bytes(sheet))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
