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

from interdyn.data import video
from interdyn.data.video import decode_frames, encode_video

ROOT = Path(__file__).resolve().parents[2]


def moving_frames(seed: int) -> np.ndarray:
    """24 frames of a disc moving over noise: enough motion and detail for real encoder choices."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    y, x = np.mgrid[:96, :128]
    frames = []
    for t in range(24):
        frame = background.copy()
        frame[(y - 48) ** 2 + (x - 20 - 4 * t) ** 2 < 15**2] = (200, 60 + 5 * t, 40)
        frames.append(frame)
    return np.stack(frames)


def world_frames(seed: int, height: int) -> np.ndarray:
    """A clip of the built-in world (flat floor, shaded discs, 16 frames): pictures on which x264's
    AVX-512 code wrote other bytes in each process."""
    from data_prep.synthetic_world import builtin_world, make_video

    return make_video(np.random.default_rng([0, 2, seed]), builtin_world(height), 16, 7.0)["frames"]


def clips() -> list[tuple[str, np.ndarray]]:
    """The clips the encoder processes encode, with the codec of each."""
    world = [("libx264", world_frames(i, 64)) for i in range(8)]
    return world + [(codec, moving_frames(i)) for i in range(2) for codec in ("libx264", "libvpx-vp9")]


# Encodes the clips of a .npz with their codecs and prints one hash per encoding (the encoder module loaded
# from its file, without the interdyn.data package and its torch, so that the processes start at once and
# overlap).
ENCODER_SCRIPT = """
import hashlib, importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("video", "interdyn/data/video.py")
video = importlib.util.module_from_spec(spec)
spec.loader.exec_module(video)
with np.load(sys.argv[1]) as clips:
    for name in sorted(clips.files, key=lambda n: int(n.split("_")[0])):
        codec = name.split("_", 1)[1]
        print(name, hashlib.sha256(video.encode_video(clips[name], 12.0, codec=codec)).hexdigest(), flush=True)
"""


def encode_in_processes(processes: int, clips_file: Path) -> list[str]:
    """Each process's printed hashes, the processes running at the same time."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENCODER_SCRIPT, str(clips_file)],
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


def test_concurrent_processes_encode_the_same_frames_to_the_same_bytes(tmp_path: Path) -> None:
    made = clips()
    np.savez(tmp_path / "clips.npz", **{f"{i}_{codec}": frames for i, (codec, frames) in enumerate(made)})
    outputs = encode_in_processes(3, tmp_path / "clips.npz")
    assert outputs[0].count("\n") == len(made) == 12
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    # and the same bytes in this (pytest's) process, with its own threads and load
    here = [
        f"{i}_{codec} {hashlib.sha256(encode_video(frames, 12.0, codec=codec)).hexdigest()}"
        for i, (codec, frames) in enumerate(made)
    ]
    assert outputs[0].splitlines() == here


def test_x264_writes_the_bytes_of_its_c_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes on any x86-64 CPU: the x264 code used writes what x264's C code writes (its own
    choice of instruction sets would not on a CPU with SSSE3 or later)."""
    frames = [world_frames(i, 64) for i in range(3)] + [moving_frames(0)]
    encoded = [encode_video(f, 12.0) for f in frames]
    monkeypatch.setattr(video, "X264_ASM", 0)
    assert [encode_video(f, 12.0) for f in frames] == encoded


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
