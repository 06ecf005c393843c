"""The demo's report: one table over several ``interdyn test`` runs, and pictures of one counterfactual
group sampled by each model (a contact sheet and a grid, as PNG and MP4).

    python -m interdyn.world.report --svd weights/world/svd --test_shards 'data/shards/world/test/*.tar' \\
        --run "no control=runs/demo_eval/no_control" --run "demo branch=runs/demo_eval/demo_branch" ... \\
        --branch "demo branch=runs/demo_eval/demo_branch_weights" --out runs/demo_eval
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interdyn.commands.parsers import run_command
from interdyn.commands.spelling import ScriptParser
from interdyn.errors import InterDynError
from interdyn.utils.files import write_atomic

# (column title, where in metrics.json / counterfactual.json, format)
COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("SSIM", ("metrics", "ssim"), "{:.3f}"),
    ("SSIM frame 1", ("metrics", "ssim_first_frame"), "{:.3f}"),
    ("PSNR", ("metrics", "psnr"), "{:.2f}"),
    ("FVD", ("metrics", "fvd"), "{:.1f}"),
    ("KVD", ("metrics", "kvd"), "{:.3f}"),
    ("motion fid.", ("metrics", "motion_fidelity"), "{:.3f}"),
    ("physics err. (px)", ("metrics", "physics_position_error"), "{:.2f}"),
    ("discs found", ("metrics", "physics_found"), "{:.2f}"),
    ("counterf. acc.", ("counterfactual", "accuracy"), "{:.2f}"),
    ("counterf. acc. (discs)", ("objects", "accuracy"), "{:.2f}"),
    ("chance", ("counterfactual", "chance"), "{:.2f}"),
]
CEILING_ROW = "ground truth through the VAE (ceiling)"


def _lookup(tables: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = tables
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else math.nan


def read_run(folder: Path) -> dict[str, Any]:
    """The metrics (``metrics.json``'s ``metrics``) and the counterfactual overall rows (on pixels and, for
    the built-in world, on the discs) of one test run."""
    metrics_file = folder / "metrics.json"
    if not metrics_file.exists():
        raise InterDynError(f"{metrics_file} does not exist: run `interdyn test` for this model first")
    tables: dict[str, Any] = {"metrics": json.loads(metrics_file.read_text())["metrics"]}
    counterfactual = folder / "counterfactual.json"
    if counterfactual.exists():
        report = json.loads(counterfactual.read_text())
        tables["counterfactual"] = report.get("overall", {})
        tables["objects"] = report.get("objects", {}).get("overall", {})
    return tables


def table(runs: dict[str, dict[str, Any]]) -> str:
    """A markdown table with one row per run."""
    head = "| model | " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, tables in runs.items():
        cells = []
        for _, path, fmt in COLUMNS:
            value = _lookup(tables, path)
            cells.append(fmt.format(value) if math.isfinite(value) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def first_group(test_shards: str, size: int, members: int) -> dict[str, Any]:
    """The first counterfactual group of the test shards: ``pixel_values (M, T, 3, H, W)``, ``control``."""
    from interdyn.world.ceiling import grouped_clips

    groups: dict[str, list[dict[str, Any]]] = {}
    for clip in grouped_clips(test_shards, size):
        group = groups.setdefault(clip["group"], [])
        group.append(clip)
        if len(group) == members:
            return {
                "pixel_values": torch.stack([c["pixel_values"] for c in group]),
                "control": torch.stack([c["control"] for c in group]),
                "keys": [c["key"] for c in group],
            }
    raise InterDynError(f"no counterfactual group of {members} clips in {test_shards}")


def uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in ``[0, 1]`` -> ``(T, H, W, 3)`` uint8."""
    return (video.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def world_module(svd: str, branch: str | None, conditioning_channels: tuple[int, ...]) -> torch.nn.Module:
    """An :class:`~interdyn.training.module.InterDynModule` for sampling (eval mode): the SVD of ``svd`` and
    the branch saved in ``branch`` (a fresh one when None: sample it with ``conditioning_scale 0``)."""
    from interdyn.training.module import InterDynModule

    module = InterDynModule(
        svd=svd, controlnet=branch, conditioning_embedding_out_channels=conditioning_channels
    )
    return module.eval()


def pictures(
    svd: str,
    branches: dict[str, str],
    group: dict[str, Any],
    out: Path,
    steps: int,
    seed: int,
    conditioning_channels: tuple[int, ...],
) -> list[Path]:
    """Sample ``group`` with the SVD alone (``conditioning_scale 0``) and with each branch; write the
    contact sheet (one row per picture: control, each model's sample, ground truth; every frame) of the
    group's first clip and the counterfactual grid (a row per member: control | samples | truth), each as
    PNG and MP4. Every member is sampled from the same noise (``seed``), so a model's rows differ by what
    their controls make of it (and by their first frames' encodings, nearly the same). The grid's tiles are
    drawn at twice their size; its PNG is the last frame."""
    from interdyn.data.video import encode_video
    from interdyn.utils.render import contact_sheet, labelled_row, png_bytes

    pixels, control = group["pixel_values"], group["control"]
    samples: dict[str, torch.Tensor] = {}
    models = {"no control": None, **branches}
    for name, branch in models.items():
        module = world_module(svd, branch, conditioning_channels)
        scale = {"conditioning_scale": 0.0} if branch is None else {}
        # each path from the same noise (one call per member, one seed), so that only the driver differs
        samples[name] = torch.cat(
            [
                module.sample(
                    pixels[m : m + 1], control[m : m + 1], seed=seed, num_inference_steps=steps, **scale
                )[:, 0]
                for m in range(len(pixels))
            ]
        )
    truth = [(uint8_frames((v + 1) / 2)) for v in pixels]
    masks = [uint8_frames((c + 1) / 2) for c in control]
    written = []
    rows = [masks[0]] + [uint8_frames(s[0]) for s in samples.values()] + [truth[0]]
    labels = ["control"] + list(samples) + ["ground truth"]
    written.append(write_atomic(out / "contact_sheet.png", png_bytes(contact_sheet(rows, labels))))
    row_video = labelled_row(rows, labels)
    written.append(write_atomic(out / "contact_sheet.mp4", encode_video(even_frames(row_video), fps=7.0)))
    # the world's 64 px frames, twice as large in the grid, so that its labels fit and its discs show
    grid_rows = [
        labelled_row(
            [
                zoom_frames(v)
                for v in [masks[m]] + [uint8_frames(s[m]) for s in samples.values()] + [truth[m]]
            ],
            [f"control {m + 1}"] + list(samples) + [f"truth {m + 1}"],
        )
        for m in range(len(truth))
    ]
    grid = np.concatenate(grid_rows, axis=1)
    # the picture shows the last frame: where each path's outcome has gone
    written.append(write_atomic(out / "counterfactual_grid.png", png_bytes(grid[-1])))
    written.append(write_atomic(out / "counterfactual_grid.mp4", encode_video(even_frames(grid), fps=7.0)))
    return written


def zoom_frames(video: np.ndarray, factor: int = 2) -> np.ndarray:
    """``(T, H, W, 3)`` -> ``(T, factor * H, factor * W, 3)``, each pixel repeated (no smoothing)."""
    return video.repeat(factor, axis=1).repeat(factor, axis=2)


def even_frames(video: np.ndarray) -> np.ndarray:
    """Crop to even height and width (libx264)."""
    t, h, w, _ = video.shape
    return np.ascontiguousarray(video[:, : h - h % 2, : w - w % 2])


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InterDynError(f"{what} must be NAME=PATH, got {value!r}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", default=[], help="NAME=FOLDER of an interdyn test run")
    parser.add_argument("--branch", action="append", default=[], help="NAME=FOLDER of a branch to picture")
    parser.add_argument("--svd", default="weights/world/svd", help="the SVD img2vid folder")
    parser.add_argument("--test_shards", default="data/shards/world/test/*.tar")
    parser.add_argument("--size", type=int, default=64, help="frame size (square)")
    parser.add_argument("--conditioning_channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of the pictures")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--ceiling_clips",
        type=int,
        default=None,
        help="add a row: the counterfactual score of the first N test clips' ground truths through the "
        "SVD's VAE (the ceiling of every model on it); 0 for all clips",
    )
    parser.add_argument("--out", type=Path, required=True)
    return run_command("python -m interdyn.world.report", parser, _run, argv)


def _run(args: argparse.Namespace) -> None:
    if args.ceiling_clips is not None and args.ceiling_clips < 0:
        raise InterDynError("--ceiling_clips must be 0 (all clips) or a positive number of clips")
    runs = {name: read_run(Path(folder)) for name, folder in _pairs(args.run, "--run").items()}
    if args.ceiling_clips is not None:
        from interdyn.world.ceiling import vae_ceiling

        limit = args.ceiling_clips or None
        ceiling = vae_ceiling(args.svd, args.test_shards, args.size, limit)
        runs[CEILING_ROW] = {
            "counterfactual": ceiling["overall"],
            "objects": ceiling.get("objects", {}).get("overall", {}),
        }
    text = table(runs)
    write_atomic(args.out / "table.md", text)
    print(text)
    branches = _pairs(args.branch, "--branch")
    if branches:
        group = first_group(args.test_shards, args.size, members=3)
        for path in pictures(
            args.svd, branches, group, args.out, args.steps, args.seed, tuple(args.conditioning_channels)
        ):
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
