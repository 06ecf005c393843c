"""Data loading throughput: clips per second from shards vs. from individual files.

Generates SSV2-like source videos with the built-in simulator (240x428, 12 fps, VP9 webm like SSV2, or
H.264 mp4), writes them once as shards and once as one folder per clip (``video.webm`` +
``mask_hand.webm``, the layout the released InterDyn demo reads), then measures clips/s for 14-frame
clips at 7 FPS, 256x384, with 0, 1 and 2 DataLoader workers. The "files" baseline decodes every frame
of both videos per clip, as the demo does; the shard path decodes only up to the clip's last frame
and reads the masks from ``masks.npz``.

    python benchmarks/loader.py                # writes the results into docs/benchmarks.md
    python benchmarks/loader.py --videos 64 --clips 128 --no_write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.shard_writer import write_samples  # noqa: E402
from data_prep.synthetic import World, make_video, sample_fields  # noqa: E402
from interdyn.data.clip_spec import PAPER_CLIP  # noqa: E402
from interdyn.data.sampling import choose_start, clip_offsets, valid_starts  # noqa: E402
from interdyn.data.shard_format import shard_name  # noqa: E402
from interdyn.data.shards import ClipDecoder, ShardClipStream, collate_clips  # noqa: E402
from interdyn.data.transforms import joint_transform  # noqa: E402
from interdyn.data.video import decode_frames, encode_video  # noqa: E402
from interdyn.utils.files import write_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- loader:begin -->", "<!-- loader:end -->"


def make_sources(root: Path, videos: int, codec: str, frames: int = 40, fps: float = 12.0) -> None:
    """Write the same videos as shards (root/shards) and as clip folders (root/files)."""
    world = World(height=240, width=428)
    ext = "webm" if codec.startswith("libvpx") else "mp4"
    samples = []
    for i in range(videos):
        video = make_video(np.random.default_rng([7, i]), world, frames, fps)
        key = f"bench-{i:05d}"
        fields = sample_fields(video, key, "train", fps, {})
        del fields["video.mp4"]
        fields[f"video.{ext}"] = encode_video(video["frames"], fps, codec=codec)
        samples.append((key, fields))
        folder = root / "files" / key
        folder.mkdir(parents=True)
        (folder / f"video.{ext}").write_bytes(fields[f"video.{ext}"])
        mask_rgb = np.repeat(video["control"][..., None].astype(np.uint8) * 255, 3, axis=-1)
        (folder / f"mask_hand.{ext}").write_bytes(encode_video(mask_rgb, fps, codec=codec))
    for start in range(0, videos, 16):  # 16 videos per shard
        name = shard_name("bench", "train", start // 16)
        write_samples(root / "shards" / "train" / name, samples[start : start + 16])


class FolderClips(Dataset):
    """The released demo's way: per clip, decode every frame of the video and of the mask video."""

    def __init__(self, root: Path, height: int, width: int) -> None:
        self.folders = sorted(p for p in root.iterdir() if p.is_dir())
        self.height, self.width = height, width

    def __len__(self) -> int:
        return 1 << 30  # cycled

    def __getitem__(self, index: int) -> dict:
        folder = self.folders[index % len(self.folders)]
        video = next(folder.glob("video.*")).read_bytes()
        mask = next(folder.glob("mask_hand.*")).read_bytes()
        frames = decode_frames(video)
        masks = decode_frames(mask)[..., 0] > 127
        offsets = clip_offsets(14, 12.0, 7.0)
        start = choose_start(
            valid_starts(min(len(frames), len(masks)), offsets), "random", random.Random(index)
        )
        idx = start + offsets
        pixels, clip_masks = joint_transform(frames[idx], masks[idx], self.height, self.width, "center")
        return {"pixel_values": pixels, "control": clip_masks, "key": folder.name}


def measure(loader_iter, clips: int, batch_size: int, warmup_batches: int = 2) -> float:
    for _ in range(warmup_batches):
        next(loader_iter)
    start, seen = time.perf_counter(), 0
    while seen < clips:
        seen += len(next(loader_iter)["key"])
    return seen / (time.perf_counter() - start)


def run(root: Path, clips: int, batch_size: int, workers: list[int]) -> list[dict]:
    rows = []
    for w in workers:
        decoder = ClipDecoder(PAPER_CLIP.with_overrides(crop="center"), random_window=True)
        stream = ShardClipStream(
            str(root / "shards/train/*.tar"), decoder, train=True, samples_per_worker=None, shuffle_buffer=16
        )
        loader = iter(DataLoader(stream, batch_size=batch_size, num_workers=w, collate_fn=collate_clips))
        rows.append({"source": "shards", "workers": w, "clips_per_s": measure(loader, clips, batch_size)})
        del loader  # stop its workers before the next measurement
        files = FolderClips(root / "files", 256, 384)
        loader = iter(DataLoader(files, batch_size=batch_size, num_workers=w, collate_fn=collate_clips))
        rows.append(
            {
                "source": "files (released demo)",
                "workers": w,
                "clips_per_s": measure(loader, clips, batch_size),
            }
        )
        del loader
    return rows


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        BEGIN,
        f"## Data loading (`benchmarks/loader.py`), {time.strftime('%Y-%m-%d')}",
        "",
        f"- Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads",
        f"- Source: {args.videos} simulated videos, 240x428, 12 fps, 40 frames, codec {args.codec}; "
        "clips of 14 frames at 7 FPS, centre crop to 256x384 (both paths), "
        f"batch {args.batch_size}, {args.clips} clips timed after 2 warm-up batches",
        "",
        "| source | workers | clips/s |",
        "|---|---|---|",
        *[f"| {r['source']} | {r['workers']} | {r['clips_per_s']:.1f} |" for r in rows],
        "",
        "Target: at least 30 clips/s on 2 cores (two H100s at batch 4 consume well under 10 clips/s).",
        END,
    ]
    block = "\n".join(lines)
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmarks\n\nMeasured by the scripts in `benchmarks/`.\n\n"
    )
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS, text)
    print(f"wrote {RESULTS}")


def main() -> None:
    from interdyn.commands.spelling import ScriptParser  # old hyphenated options still work

    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--codec", default="libvpx-vp9", choices=["libvpx-vp9", "libx264"])
    parser.add_argument(
        "--no_write", action="store_true", help="print only; do not update docs/benchmarks.md"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # loader workers and the trainer share the cores; decode is per process
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_sources(root, args.videos, args.codec)
        print(f"prepared {args.videos} videos in {time.perf_counter() - t:.0f} s", flush=True)
        rows = run(root, args.clips, args.batch_size, args.workers)
    print(json.dumps(rows, indent=1))
    if not args.no_write:
        write_results(rows, args)


if __name__ == "__main__":
    main()
