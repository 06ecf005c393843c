"""The preparers' videos are byte-reproducible: the same frames give the same encoded bytes in any process,
also when several processes encode at once (docs/data.md promises the same shards from any run)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interdyn.data.video import decode_frames, encode_video

ROOT = Path(__file__).resolve().parents[2]


# Shared by this process and the encoder processes (which load no torch, so they start at once and overlap).
FRAMES_SOURCE = """
import numpy as np
def moving_frames(seed):
    # 24 frames of a disc moving over noise: enough motion and detail for real encoder choices
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    y, x = np.mgrid[:96, :128]
    frames = []
    for t in range(24):
        frame = background.copy()
        frame[(y - 48) ** 2 + (x - 20 - 4 * t) ** 2 < 15**2] = (200, 60 + 5 * t, 40)
        frames.append(frame)
    return np.stack(frames)
"""
_frames: dict = {}
exec(FRAMES_SOURCE, _frames)
moving_frames = _frames["moving_frames"]

# Encodes a few clips with each codec and prints one hash per encoding (the encoder module loaded from
# its file, without the interdyn.data package and its torch).
ENCODER_SCRIPT = (
    FRAMES_SOURCE
    + """
import hashlib, importlib.util, sys
spec = importlib.util.spec_from_file_location("video", "interdyn/data/video.py")
video = importlib.util.module_from_spec(spec)
spec.loader.exec_module(video)
encode_video = video.encode_video
for i in range(int(sys.argv[1])):
    for codec in ("libx264", "libvpx-vp9"):
        data = encode_video(moving_frames(i), 12.0, codec=codec)
        print(codec, i, hashlib.sha256(data).hexdigest(), flush=True)
"""
)


def encode_in_processes(processes: int, clips: int) -> list[str]:
    """Each process's printed hashes, the processes running at the same time."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENCODER_SCRIPT, str(clips)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def test_concurrent_processes_encode_the_same_frames_to_the_same_bytes() -> None:
    first, second = encode_in_processes(2, clips=2)
    assert first.count("\n") == 4  # 2 clips x 2 codecs
    assert first == second
    # and the same bytes as this (pytest's) process, with its own threads and load
    here = hashlib.sha256(encode_video(moving_frames(1), 12.0, codec="libvpx-vp9")).hexdigest()
    assert first.splitlines()[3] == f"libvpx-vp9 1 {here}"


def test_x264_runs_with_one_thread_and_no_slice_or_lookahead_threads() -> None:
    # x264 writes the settings it ran with into the stream: the options reached the encoder (PyAV's
    # default is an automatic thread count with slice threads, which depends on the machine's cores)
    frames = (np.random.default_rng(0).random((6, 64, 64, 3)) * 255).astype(np.uint8)
    data = encode_video(frames, 7.0)
    settings = re.search(rb"options: ([^\x00]*)", data)
    assert settings is not None
    used = dict(item.split(b"=", 1) for item in settings.group(1).split() if b"=" in item)
    assert (used[b"threads"], used[b"lookahead_threads"], used[b"sliced_threads"]) == (b"1", b"1", b"0")
    assert used[b"crf"].startswith(b"18")
    assert decode_frames(data).shape == frames.shape


@pytest.mark.parametrize("codec", ["libx264", "libvpx-vp9"])
def test_repeated_encodes_in_one_process_are_identical(codec: str) -> None:
    frames = (np.random.default_rng(1).random((8, 48, 64, 3)) * 255).astype(np.uint8)
    assert encode_video(frames, 12.0, codec=codec) == encode_video(frames, 12.0, codec=codec)


@pytest.mark.slow  # the whole preparer, twice, in four worker processes
def test_two_concurrent_synthetic_preparations_write_identical_shards(tmp_path: Path) -> None:
    # the whole preparer, twice at the same time with the same arguments, 2 workers each
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "data_prep.synthetic",
                "--out",
                str(out),
                "--size",
                "64",
                "64",
                "--frames",
                "16",
                "--train",
                "12",
                "--val",
                "2",
                "--test_groups",
                "2",
                "--shard_size",
                "4",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for out in runs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    shards = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*.tar"))
    assert len(shards) >= 5  # 3 training shards, validation, test
    assert shards == sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*.tar"))
    for shard in shards:
        assert (runs[0] / shard).read_bytes() == (runs[1] / shard).read_bytes(), shard
