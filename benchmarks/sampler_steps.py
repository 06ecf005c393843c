"""Sample quality against sampler steps on the trained world: physics error, FVD and SSIM of the shipped
branch's videos on the held-out test clips, for each sampler and number of steps.

    make world-data && make weights      # the world's shards and the I3D weights for FVD
    python benchmarks/sampler_steps.py   # euler and dpmpp_2m at 4, 8, 12, 25 and 50 steps

Each point is one ``interdyn test`` run of ``configs/demo.yaml`` (the same clips and seeds for every
point) with the branch in ``--controlnet``, in its own process; a point whose ``metrics.json`` already
exists under ``--out`` is read, not rerun, so a killed run resumes. Writes the table to
``docs/benchmarks.md`` (section ``sampler-steps``) and a plot to ``docs/benchmarks/sampler_steps.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import machine, write_section  # noqa: E402

from interdyn.utils.render import chart_canvas  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (metrics.json key, column title, lower is better)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("physics_position_error", "physics error (px)", True),
    ("fvd", "FVD", True),
    ("ssim", "SSIM", False),
    ("psnr", "PSNR (dB)", False),
    ("motion_fidelity", "motion fidelity", False),
    ("counterfactual_accuracy", "counterf. acc.", False),
)
PLOTTED = ("physics_position_error", "fvd", "ssim")
COLOURS = {"euler": (90, 170, 255), "dpmpp_2m": (255, 150, 60), "edm_euler": (120, 220, 120)}


def overlay(args: argparse.Namespace, scheduler: str, steps: int) -> dict[str, Any]:
    """The config overlay of one point: the branch, the sampler, and only the video metrics."""
    evaluation: dict[str, Any] = {
        "metrics": ["ssim", "psnr", "fvd", "motion_fidelity", "physics"],
        "num_samples": 1,
        "seed": args.seed,
        "save_videos": 0,
    }
    if args.i3d_weights:
        evaluation["i3d_weights"] = args.i3d_weights
    return {
        "model": {
            "controlnet": args.controlnet,
            "sampling": {"scheduler": scheduler, "num_inference_steps": steps, "conditioning_scale": 1.0},
        },
        "trainer": {
            "limit_test_batches": args.limit_test_batches,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(args.out), "name": f"{scheduler}_{steps}", "version": "test"},
            },
            "callbacks": [
                {"class_path": "interdyn.callbacks.VideoEvaluation", "init_args": evaluation},
                {
                    "class_path": "interdyn.callbacks.CounterfactualEvaluation",
                    "init_args": {
                        "num_samples": 1,
                        "seed": args.seed,
                        "region": "outside_driver",
                        "max_side": 64,
                    },
                },
            ],
        },
    }


def run_point(args: argparse.Namespace, scheduler: str, steps: int) -> dict[str, Any]:
    """One point's metrics (read from an earlier run when present) and the seconds its test run took."""
    folder = Path(args.out) / f"{scheduler}_{steps}" / "test"
    result = folder / "metrics.json"
    timing = folder / "seconds.json"
    if not result.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config = folder.parent / "overlay.yaml"
        config.write_text(yaml.safe_dump(overlay(args, scheduler, steps), sort_keys=False))
        configs = [arg for path in [*args.config, str(config)] for arg in ("--config", str(path))]
        command = [sys.executable, "-m", "interdyn.commands.cli", "test", *configs]
        print(f"[{scheduler}, {steps} steps] {' '.join(command)}", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0 or not result.is_file():
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"the test run for {scheduler} at {steps} steps failed (exit {done.returncode})")
        timing.write_text(json.dumps({"seconds": seconds}))
    metrics = json.loads(result.read_text())["metrics"]
    counterfactual = folder / "counterfactual.json"
    if counterfactual.is_file():  # absent from runs made before the column existed
        metrics["counterfactual_accuracy"] = json.loads(counterfactual.read_text())["overall"]["accuracy"]
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
    return {"scheduler": scheduler, "steps": steps, "seconds": seconds, **metrics}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per (sampler, steps)."""
    head = "| sampler | steps | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        values = " | ".join(_fmt(row.get(key)) for key, _, _ in COLUMNS)
        lines.append(f"| {row['scheduler']} | {row['steps']} | {values} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def panel(rows: list[dict[str, Any]], key: str, title: str, size: tuple[int, int] = (300, 220)) -> np.ndarray:
    """One line chart of ``key`` against steps (log-2 x axis), a line per sampler -> ``(H, W, 3)`` uint8."""
    w, h = size
    image, draw, font = chart_canvas(size, title, background=(250, 250, 250), ink=(20, 20, 20))
    left, right, top, bottom = 44, 10, 22, 30
    points = [(r["scheduler"], r["steps"], r.get(key)) for r in rows]
    points = [(s, n, v) for s, n, v in points if v is not None and math.isfinite(v)]
    if not points:
        draw.text((left, h // 2), "no data", fill=(20, 20, 20), font=font)
        return np.asarray(image)
    xs = [math.log2(n) for _, n, _ in points]
    lo, hi = min(v for *_, v in points), max(v for *_, v in points)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)

    def xy(steps: int, value: float) -> tuple[float, float]:
        x = left + (math.log2(steps) - x0) / (x1 - x0) * (w - left - right)
        return x, top + (hi - value) / (hi - lo) * (h - top - bottom)

    draw.rectangle((left, top, w - right, h - bottom), outline=(160, 160, 160))
    for value in (lo + pad, hi - pad):
        _, y = xy(2 ** int(x0), value)
        draw.text((2, y - 5), _fmt(value), fill=(80, 80, 80), font=font)
    for steps in sorted({n for _, n, _ in points}):
        x, _ = xy(steps, lo)
        draw.line((x, h - bottom, x, h - bottom + 3), fill=(80, 80, 80))
        draw.text((x - 6, h - bottom + 5), str(steps), fill=(80, 80, 80), font=font)
    draw.text((w - right - 60, h - 12), "steps (log)", fill=(80, 80, 80), font=font)
    for i, scheduler in enumerate(dict.fromkeys(s for s, _, _ in points)):
        colour = COLOURS.get(scheduler, (120, 120, 120))
        line = sorted((n, v) for s, n, v in points if s == scheduler)
        coords = [xy(n, v) for n, v in line]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for x, y in coords:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((left + 4 + 70 * i, top + 3), scheduler, fill=colour, font=font)
    return np.asarray(image)


def plot(rows: list[dict[str, Any]]) -> np.ndarray:
    """The plotted metrics side by side."""
    titles = {key: title + (" (lower is better)" if lower else "") for key, title, lower in COLUMNS}
    return np.concatenate([panel(rows, key, titles[key]) for key in PLOTTED], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        nargs="+",
        default=["configs/demo.yaml"],
        help="the test config and overlays (data, SVD, clips)",
    )
    parser.add_argument("--controlnet", default="weights/world/branch", help="the branch to sample with")
    parser.add_argument("--schedulers", nargs="+", default=["euler", "dpmpp_2m"])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 8, 12, 25, 50])
    parser.add_argument(
        "--limit_test_batches", type=int, default=6, help="test batches of 4 clips (6: 24 clips)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--i3d_weights", default=None, help="FVD weights (default: the fetched ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sampler_steps")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks" / "sampler_steps.png")
    args = parser.parse_args(argv)
    for path, what in [*((c, "config") for c in args.config), (args.controlnet, "branch")]:
        if not (ROOT / path).exists() and not Path(path).exists():
            raise SystemExit(f"The {what} {path} does not exist.")

    rows = [run_point(args, s, n) for s in args.schedulers for n in sorted(args.steps)]
    from interdyn.utils.files import write_atomic
    from interdyn.utils.render import png_bytes

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.plot, png_bytes(plot(rows)))
    clips = args.limit_test_batches * 4
    # the test split is whole counterfactual groups of 3 clips, in order
    groups = f" (the first {clips // 3} counterfactual groups of 3)" if clips % 3 == 0 else ""
    try:
        plot_link = os.path.relpath(args.plot, args.doc.parent)
    except ValueError:
        plot_link = str(args.plot)
    text = "\n".join(
        [
            f"## Sample quality against sampler steps (`benchmarks/sampler_steps.py`), {datetime.date.today()}",
            "",
            f"- {machine('cpu')}",
            f"- `interdyn test --config {' --config '.join(args.config)}` with the branch `{args.controlnet}`, {clips} held-out "
            f"test clips{groups}, one sample each, seed {args.seed}, guidance 1 -> 3; "
            "the same clips and seeds at every point. Compute is the steps: each is one batched guided "
            "forward of the UNet and the branch, whatever the sampler (seconds per step: the sampling table).",
            "",
            table(rows),
            "",
            f"![quality against steps]({plot_link})",
        ]
    )
    write_section("sampler-steps", text, args.doc)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
