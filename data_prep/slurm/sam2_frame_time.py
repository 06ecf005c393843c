"""Time the SAM2 video predictor per frame, as the SSV2 preparer runs it, and estimate the wall time of
SSV2's hand masks over a number of GPUs (or CPU processes).

    python data_prep/slurm/sam2_frame_time.py --device cpu --frames 4           # random weights
    python data_prep/slurm/sam2_frame_time.py --device cuda --checkpoint sam2.1_hiera_large.pt --frames 48

Random weights (no ``--checkpoint``) cost the same per frame as trained ones: SAM2 resizes every frame
to its ``image_size`` (1024 for the released models) whatever the video's size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from data_prep.sam2_masks import DEFAULT_SAM2_CONFIG, Sam2Settings, sam2_masks, sam2_predictor  # noqa: E402
from interdyn.commands.spelling import ScriptParser


def moving_box_video(frames: int, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """A bright box moving over grey, SSV2-sized, and one hand track boxed on every 4th frame."""
    video = np.full((frames, height, width, 3), 90, dtype=np.uint8)
    track = {}
    for t in range(frames):
        x = 20 + 3 * t
        video[t, 60:140, x : x + 80] = (220, 170, 130)
        if t % 4 == 0:
            track[t] = (float(x), 60.0, float(x + 80), 140.0)
    return video, [track]


def main(argv: list[str] | None = None) -> int:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_SAM2_CONFIG, help="SAM2 model config")
    parser.add_argument("--checkpoint", default=None, help="SAM2 checkpoint (default: random weights)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--frames", type=int, default=8, help="frames of the timed video")
    parser.add_argument("--height", type=int, default=240, help="SSV2 videos are 240 px high")
    parser.add_argument("--width", type=int, default=427)
    parser.add_argument(
        "--override", action="append", default=[], help="hydra override, e.g. ++model.image_size=512"
    )
    parser.add_argument("--videos", type=int, default=169_000, help="videos to estimate for")
    parser.add_argument("--frames_per_video", type=float, default=45.0, help="mean frames per video")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64], help="parts to estimate for")
    args = parser.parse_args(argv)

    settings = Sam2Settings(
        args.checkpoint, args.config, args.device, prompt_every=1, hydra_overrides=args.override
    )
    started = time.perf_counter()
    sam2_predictor(settings)
    print(f"built {args.config} in {time.perf_counter() - started:.1f} s")
    warm, tracks = moving_box_video(2, args.height, args.width)
    sam2_masks(warm, tracks, settings)  # first call: allocations, lazy initialisation
    video, tracks = moving_box_video(args.frames, args.height, args.width)
    started = time.perf_counter()
    sam2_masks(video, tracks, settings)
    per_frame = (time.perf_counter() - started) / args.frames
    print(f"{per_frame:.3f} s per frame ({1 / per_frame:.2f} frames/s) over {args.frames} frames")
    total = args.videos * args.frames_per_video * per_frame
    for gpus in args.gpus:
        hours = total / gpus / 3600
        print(f"{args.videos} videos x {args.frames_per_video:g} frames on {gpus} device(s): {hours:,.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
