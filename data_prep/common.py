"""Pieces every dataset preparer shares: reading source videos, length checks, boxes to masks, the
command-line options common to all preparers (mask binarisation: :func:`interdyn.data.media.binarize`)
and the run's time by phase (:func:`prep_times`, printed once at the end of ``main``)."""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.build import INDEXING, Item, build_split, default_workers
from data_prep.parts import Part, resolve_part
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.media import MediaError, read_video_file
from interdyn.data.sampling import clip_offsets
from interdyn.data.shard_format import SkipSample
from interdyn.utils.timing import PhaseTimes, command_start

STARTUP = "start-up (imports, arguments)"
LISTING = "listing the sources"


def read_video(path: Path) -> tuple[bytes, np.ndarray, float]:
    """The encoded bytes, every decoded frame ``(T, H, W, 3)`` uint8 and the frame rate of a video file.

    Raises :class:`SkipSample` (``missing_video`` / ``corrupt_video``) rather than library errors.
    """
    path = Path(path)
    if not path.is_file():
        raise SkipSample("missing_video", str(path))
    try:
        data, frames, fps = read_video_file(path)
    except MediaError as err:
        raise SkipSample("corrupt_video", f"{path}: {err}") from None
    if fps is None:
        raise SkipSample("corrupt_video", f"{path}: no frame rate in the container")
    return data, frames, fps


def count_video(path: Path) -> tuple[bytes, int, float, int, int]:
    """``(bytes, num_frames, fps, height, width)`` of a video file, decoding every frame (so that the
    count is exact and corrupt data is found) without converting any to RGB (little memory)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise SkipSample("missing_video", str(path))
    data = path.read_bytes()
    if not data:
        raise SkipSample("corrupt_video", f"{path} is empty")
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            count, height, width = 0, stream.height, stream.width
            for frame in container.decode(stream):
                count += 1
                height, width = frame.height, frame.width
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise SkipSample("corrupt_video", f"{path}: {err}") from None
    if count == 0:
        raise SkipSample("corrupt_video", f"{path}: no frames")
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise SkipSample("corrupt_video", f"{path}: no frame rate in the container")
    return data, count, fps, height, width


def min_source_frames(num_frames: int, fps: float, target_fps: float | None, frame_stride: int | None) -> int:
    """Source frames a video needs for one clip of ``num_frames`` at ``target_fps`` (or ``frame_stride``)."""
    return int(clip_offsets(num_frames, fps, target_fps, frame_stride)[-1]) + 1


def check_length(
    num_source: int, fps: float, num_frames: int, target_fps: float | None, frame_stride: int | None
) -> None:
    """Raise ``SkipSample("too_short")`` when no clip fits in the video."""
    need = min_source_frames(num_frames, fps, target_fps, frame_stride)
    if num_source < need:
        rate = f"stride {frame_stride}" if frame_stride else f"{target_fps:g} FPS"
        raise SkipSample(
            "too_short", f"{num_source} frames at {fps:g} fps; {num_frames} frames at {rate} need {need}"
        )


def clip_box(
    box: tuple[float, float, float, float], height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Clamp ``(x1, y1, x2, y2)`` (pixels, x2/y2 exclusive) to the frame; ``None`` if nothing is left."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    ix1, iy1 = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
    ix2, iy2 = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2


def fill_boxes(boxes_per_frame: list[list[tuple[int, int, int, int]]], height: int, width: int) -> np.ndarray:
    """Filled boxes (already clipped) -> bool masks ``(T, H, W)``."""
    masks = np.zeros((len(boxes_per_frame), height, width), dtype=bool)
    for t, boxes in enumerate(boxes_per_frame):
        for x1, y1, x2, y2 in boxes:
            masks[t, y1:y2, x1:x2] = True
    return masks


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by every preparer (output, parallelism, resumption, clip length filter)."""
    group = parser.add_argument_group("output and running")
    group.add_argument(
        "--out", type=Path, default=Path(default_out), help="output root; one folder per split"
    )
    group.add_argument(
        "--workers", type=int, default=default_workers(), help="parallel processes (default: CPUs, at most 8)"
    )
    group.add_argument("--shard_size", type=int, default=100, help="source videos per shard")
    group.add_argument(
        "--overwrite", action="store_true", help="rebuild splits that were made with other settings"
    )
    group.add_argument("--strict", action="store_true", help="stop at the first unexpected error")
    group.add_argument(
        "--limit", type=int, default=None, help="only the first N videos of each split (trials)"
    )
    group.add_argument("--no_progress", action="store_true", help="no progress bars")
    group.add_argument(
        "--part",
        default=None,
        metavar="I/N",
        help="make only part I of N (0-based; default: from RANK/WORLD_SIZE of torchrun, SLURM_PROCID/"
        "SLURM_NTASKS of srun or SLURM_ARRAY_TASK_ID/COUNT, else the whole split); see docs/data.md",
    )
    group.add_argument(
        "--finalize",
        action="store_true",
        help="make nothing: write index.json and report.json once every part is done (else name the missing chunks)",
    )
    clip = parser.add_argument_group("clip length filter (videos too short for one clip are skipped)")
    clip.add_argument(
        "--num_frames", type=int, default=PAPER_CLIP.num_frames, help="frames per training clip"
    )
    clip.add_argument("--target_fps", type=float, default=PAPER_CLIP.fps, help="clip frame rate")
    clip.add_argument(
        "--frame_stride", type=int, default=None, help="fixed source stride instead of --target_fps"
    )


def run_split(
    args: argparse.Namespace,
    dataset: str,
    split: str,
    items: list[Item],
    maker: Any,
    settings: dict[str, Any],
    provenance: dict[str, Any],
    part: Part | None = None,
    on_finalized: Callable[[Path, str], int] | None = None,
    times: PhaseTimes | None = None,
) -> int:
    """Build one split (or this process's part of it) with the common options of
    :func:`add_common_arguments`; print its summary.

    ``on_finalized(folder, split)`` runs once the split's index is written (by this process) and returns
    an exit code. Returns a process exit code: 0, 2 for a refused or broken run (one sentence on stderr),
    130 after Ctrl-C (the builder has said what was kept). ``times`` gets the split's phases.
    """
    try:
        part = part or resolve_part(args.part)
        if not part.whole and not args.finalize:
            print(f"{dataset}/{split}: part {part} ({part.source})", flush=True)
        result = build_split(
            args.out,
            dataset,
            split,
            items,
            maker,
            shard_size=args.shard_size,
            workers=args.workers,
            settings={**settings, **length_settings(args)},
            provenance=provenance,
            overwrite=args.overwrite,
            strict=args.strict,
            progress=not args.no_progress,
            part=part,
            finalize_only=args.finalize,
            times=times,
        )
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(result.summary(), flush=True)
    if result.finalized and on_finalized is not None:
        if times is None:
            return on_finalized(result.folder, split)
        with times.phase(INDEXING):
            return on_finalized(result.folder, split)
    return 0


def prep_times(command: str, argv: list[str] | None) -> PhaseTimes:
    """The time-by-phase record of a preparer's ``main(argv)``, counted from the process's start when it
    runs as a command (``argv`` None: the imports count); call right before parsing the arguments, and
    :meth:`~interdyn.utils.timing.PhaseTimes.show` it once the splits have run."""
    return PhaseTimes(command, started=command_start(argv is None))


def length_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"num_frames": args.num_frames, "target_fps": args.target_fps, "frame_stride": args.frame_stride}
