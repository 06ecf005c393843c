"""Video encoding benchmark: libx264 with the instruction sets the preparers use (``X264_ASM``: SSE2 on
x86-64), with x264's own choice (the newest the CPU runs) and with x264's C code; for each, the time per
clip and whether its bytes are those of the C code and the same in two processes.

    python benchmarks/encode.py            # writes the encoding section of docs/benchmarks.md
    python benchmarks/encode.py --no_write
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((16, 64, 64), (30, 256, 384), (60, 480, 640))  # frames, height, width
CHOICES = {"X264_ASM (used)": "default", "x264's own choice": None, "C code (asm=0)": 0}


def clip(frames: int, height: int, width: int) -> np.ndarray:
    """Discs moving over a textured floor: enough detail and motion for real encoder decisions."""
    rng = np.random.default_rng(frames * height)
    floor = rng.integers(0, 255, (height, width, 3), dtype=np.uint8) // 3 + 80
    y, x = np.mgrid[:height, :width]
    out = np.repeat(floor[None], frames, axis=0)
    for t in range(frames):
        for k in range(3):
            cy, cx, r = (k + 1) * height // 4, (width // 8) + (k + 2) * t * width // 200, height // 10 + k
            out[t, (y - cy) ** 2 + (x - cx) ** 2 < r * r] = (200 - 60 * k, 90 + 3 * t % 100, 40 + 50 * k)
    return out


def world_clips() -> list[np.ndarray]:
    """16 clips of the built-in world (flat floor, shaded discs) at 64x64 and 64x96: pictures on which
    x264's AVX-512 code writes other bytes from one process to the next."""
    from data_prep.synthetic import World, make_video

    return [
        make_video(np.random.default_rng([0, 2, i]), World(height=64, width=width), 16, 7.0)["frames"]
        for width in (64, 96)
        for i in range(8)
    ]


def hashes_in_a_process(choice: int | None | str) -> list[str]:
    """The sha256 of each size's clip and of each world clip, encoded in a fresh process with ``choice``."""
    code = (
        "import hashlib, sys; sys.path.insert(0, 'benchmarks'); from encode import clip, world_clips, SIZES\n"
        "from interdyn.data import video\n"
        f"choice = {choice!r}\n"
        "if choice != 'default': video.X264_ASM = choice\n"
        "for frames in [clip(*size) for size in SIZES] + world_clips():\n"
        "    print(hashlib.sha256(video.encode_video(frames, 12.0)).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="encodes per clip and choice (the median is kept)"
    )
    parser.add_argument(
        "--no_write", action="store_true", help="print only; do not update docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    from interdyn.data import video

    default = video.X264_ASM
    clips = [clip(*size) for size in SIZES]
    rows, encoded = [], {}
    for name, choice in CHOICES.items():
        video.X264_ASM = default if choice == "default" else choice
        times, data = [], []
        for frames in clips:
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = video.encode_video(frames, 12.0)
                runs.append(time.perf_counter() - start)
            times.append(float(np.median(runs)))
            data.append(hashlib.sha256(result).hexdigest())
        encoded[name] = data
        # three fresh processes: the same bytes in each (and, for the timed clips, as in this one)?
        runs = [hashes_in_a_process(choice) for _ in range(3)]
        same = runs[0] == runs[1] == runs[2] and runs[0][: len(SIZES)] == data
        rows.append((name, times, same))
    video.X264_ASM = default
    c_code = encoded["C code (asm=0)"]
    sizes = [f"{t} x {h}x{w}" for t, h, w in SIZES]
    lines = [
        f"Encoding, {datetime.date.today()}: `python benchmarks/encode.py` on {machine('cpu')}; "
        f"libx264 crf 18, preset fast, one thread, median of {args.repeats} encodes; `X264_ASM` = {default}. "
        "The last column: the timed clips and 16 clips of the built-in world, each encoded in 3 processes.",
        "",
        "| x264 code | "
        + " | ".join(f"{s} (s)" for s in sizes)
        + " | bytes of the C code | same bytes in 3 processes |",
        "|---|" + "---|" * len(sizes) + "---|---|",
    ]
    for name, times, same in rows:
        as_c = sum(a == b for a, b in zip(encoded[name], c_code, strict=True))
        lines.append(
            f"| {name} | "
            + " | ".join(f"{t:.3f}" for t in times)
            + f" | {as_c} of {len(SIZES)} | {'yes' if same else 'no'} |"
        )
    publish("\n".join(lines), "encoding", write=not args.no_write)


if __name__ == "__main__":
    main()
