"""Preparation in parts: the part from --part or the launcher's variables, n parts giving the bytes of one
process, a part killed mid-shard and rerun, and the index refused while chunks are missing."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import folder as folder_prep
from data_prep.build import Item, MissingChunksError, build_split, count
from data_prep.parts import Part, PartSpecError, part_device, resolve_part
from tests.helpers import moving_square_video, write_video

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
)  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "spec", "expected"),
    [
        ({}, None, (0, 1, None)),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5"}, None, (5, 8, 5)),  # torchrun, one node
        ({"RANK": "13", "WORLD_SIZE": "16", "LOCAL_RANK": "5"}, None, (13, 16, 5)),  # torchrun, two nodes
        ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, None, (9, 16, 1)),  # srun
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "32"}, None, (3, 32, None)),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "32", "SLURM_ARRAY_TASK_MIN": "1"}, None, (0, 32, None)),
        # a job array of torchrun jobs: array task 2 of 4, rank 3 of 8 -> part 2 * 8 + 3 of 32
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, None, (19, 32, 3)),
        # torchrun inside an srun allocation: torchrun's variables win
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None, (1, 2, 1)),
        # --part wins over the launcher; the local rank still picks the device
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5"}, "3/32", (3, 32, 5)),
        ({}, "0/1", (0, 1, None)),
    ],
)  # fmt: skip
def test_part_from_the_launcher_environment(clean_env, env, spec, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    part = resolve_part(spec)
    assert (part.index, part.count, part.local_rank) == expected


@pytest.mark.parametrize(
    ("env", "spec", "words"),
    [
        ({}, "3", "INDEX/COUNT"),
        ({}, "4/4", "does not exist"),
        ({}, "a/b", "INDEX/COUNT"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, None, "RANK='x'"),
        ({"SLURM_ARRAY_TASK_ID": "40", "SLURM_ARRAY_TASK_COUNT": "32"}, None, "outside 0..31"),
    ],
)
def test_bad_parts_are_one_sentence(clean_env, env, spec, words):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(PartSpecError, match=words):
        resolve_part(spec)


def test_parts_share_chunks_round_robin_and_pick_the_local_gpu(clean_env):
    parts = [Part(i, 3) for i in range(3)]
    assert [p.chunks(8) for p in parts] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    clean_env.setenv("RANK", "2")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "2")
    part = resolve_part()
    assert part_device(part, "cpu") == "cpu"  # an explicit device always wins
    import torch

    if not torch.cuda.is_available():
        assert part_device(part, None) is None  # the caller's CPU default
    elif torch.cuda.device_count() > 2:
        assert part_device(part, None) == "cuda:2"
    else:  # one GPU per task (CUDA_VISIBLE_DEVICES set by the launcher): the only one there is
        assert part_device(part, None) == f"cuda:{2 % torch.cuda.device_count()}"


def toy_maker(item: Item):
    """A tiny deterministic sample; '004' is skipped; counts two 'frames' per sample."""
    if item.id == "004":
        from interdyn.data.shard_format import SkipSample

        raise SkipSample("too_short", "test")
    count("frames", 2)
    return f"toy-{item.id}", {"txt": item.id.encode(), "json": {"id": item.id}}


def split_files(folder: Path) -> dict[str, bytes]:
    names = [p for p in sorted(folder.iterdir()) if p.is_file()]
    return {p.name: p.read_bytes() for p in names}


def test_parts_in_any_order_give_the_bytes_of_one_process(tmp_path):
    items = [Item(f"{i:03d}") for i in range(10)]
    kw = {"shard_size": 3, "progress": False, "settings": {"x": 1}, "provenance": {"preparer": "toy"}}
    whole = build_split(tmp_path / "one", "toy", "train", items, toy_maker, **kw)
    assert whole.finalized and whole.counters == {"frames": 18} and "videos/s" in whole.summary()
    time.sleep(1.05)  # the parts run in another second: no time stamp may reach the files

    out = tmp_path / "parts"
    first = build_split(out, "toy", "train", items, toy_maker, part=Part(2, 3), **kw)
    assert not first.finalized and first.written_shards == 1  # chunk 2
    assert first.missing == ["toy-train-000000.tar", "toy-train-000001.tar", "toy-train-000003.tar"]
    assert not (out / "train" / "index.json").exists()
    with pytest.raises(MissingChunksError, match=r"3 of 4 chunks .*0 \(toy-train-000000.tar\)"):
        build_split(out, "toy", "train", items, toy_maker, finalize_only=True, **kw)
    build_split(out, "toy", "train", items, toy_maker, part=Part(0, 3), **kw)  # chunks 0 and 3
    last = build_split(out, "toy", "train", items, toy_maker, part=Part(1, 3), **kw)
    assert last.finalized, "the last part to finish writes the index"
    assert split_files(out / "train") == split_files(tmp_path / "one" / "train")
    # --finalize on a finished split rewrites the same bytes
    again = build_split(out, "toy", "train", items, toy_maker, finalize_only=True, **kw)
    assert again.finalized and split_files(out / "train") == split_files(tmp_path / "one" / "train")


# --------------------------------------------------------------------------- processes
FRAMES, SIDE = 6, 32


def make_clips(root: Path, n: int) -> None:
    """``n`` clip folders for the folder preparer: an mp4 (kept as it is) and a folder of mask PNGs;
    clip05 has no mask and is skipped."""
    frames, masks = moving_square_video(FRAMES, SIDE, SIDE + 16, x0=0, y0=8, speed=1)
    video = write_video(root / "video.mp4", frames, 6.0)
    for i in range(n):
        clip = root / f"clip{i:02d}"
        clip.mkdir()
        (clip / "video.mp4").write_bytes(video.read_bytes())
        if i == 5:
            continue
        (clip / "mask_hand").mkdir()
        for t in range(FRAMES):
            Image.fromarray((np.roll(masks[t], i, axis=1) * 255).astype(np.uint8)).save(
                clip / "mask_hand" / f"{t:02d}.png"
            )
    video.unlink()


def folder_args(inp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--input", str(inp), "--name", "toy", "--out", str(out), "--shard_size", "3", "--workers", "1",
        "--num_frames", "4", "--frame_stride", "1", "--no_progress", *extra,
    ]  # fmt: skip


class PartProcess:
    """One part of the folder preparer in its own process: ``python -m data_prep.folder`` (a fresh
    interpreter, as a launcher starts it) or a fork of this one running the same ``main`` (no import
    time: the fast default)."""

    def __init__(self, launcher: str, argv: list[str], log: Path) -> None:
        self.log = log
        if launcher == "python -m":
            env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS} | {"OMP_NUM_THREADS": "1"}
            with open(log, "w") as f:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "data_prep.folder", *argv], cwd=REPO, env=env, stdout=f, stderr=f
                )
            self.pid = self.proc.pid
        else:
            self.proc = mp.get_context("fork").Process(target=_run_part, args=(argv, str(log)))
            self.proc.start()
            self.pid = self.proc.pid

    def running(self) -> bool:
        return (self.proc.poll() if isinstance(self.proc, subprocess.Popen) else self.proc.exitcode) is None

    def wait(self, timeout: float) -> int:
        if isinstance(self.proc, subprocess.Popen):
            return self.proc.wait(timeout)
        self.proc.join(timeout)
        assert self.proc.exitcode is not None, f"part did not end: {self.output()}"
        return self.proc.exitcode

    def output(self) -> str:
        return self.log.read_text()


def _run_part(argv: list[str], log: str) -> None:
    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 - the child's whole life
    os._exit(folder_prep.main(argv))


@pytest.mark.parametrize("launcher", ["fork", pytest.param("python -m", marks=pytest.mark.slow)])
def test_three_part_processes_one_killed_mid_shard_and_rerun_give_the_bytes_of_one(
    clean_env, tmp_path, capsys, launcher
):
    """11 clips in 4 chunks of 3; part 0 of 3 owns chunks 0 and 3. Its second clip of chunk 3 has a mask
    frame that is a FIFO: the part blocks there, mid-shard, until the test kills it (SIGKILL)."""
    inp = tmp_path / "clips"
    make_clips(inp, 11)
    assert folder_prep.main(folder_args(inp, tmp_path / "one")) == 0  # the single-process reference

    blocked = inp / "clip10" / "mask_hand" / "02.png"
    real = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    out = tmp_path / "parts"
    parts = [
        PartProcess(launcher, folder_args(inp, out, "--part", f"{i}/3"), tmp_path / f"part{i}.log")
        for i in range(3)
    ]
    writer = None
    try:
        for part in parts[1:]:
            assert part.wait(180) == 0, part.output()
            assert "videos/s" in part.output() and "Not indexed yet" in part.output()
        deadline = time.monotonic() + 180
        while writer is None:  # opening the FIFO's write end succeeds once part 0 reads from it
            assert parts[0].running(), parts[0].output()
            try:
                writer = os.open(blocked, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                assert err.errno == errno.ENXIO and time.monotonic() < deadline, "part 0 never reached clip10"
                time.sleep(0.05)
        progress = out / "train" / "_progress"
        assert (progress / "toy-train-000000.tar.json").exists(), "chunk 0 was finished before chunk 3"
        assert not (out / "train" / "toy-train-000003.tar").exists()
        os.kill(parts[0].pid, signal.SIGKILL)
        assert parts[0].wait(30) in (-signal.SIGKILL, 128 + signal.SIGKILL)
    finally:
        for part in parts:
            if part.running():
                os.kill(part.pid, signal.SIGKILL)
                part.wait(30)
        if writer is not None:
            os.close(writer)

    capsys.readouterr()
    assert folder_prep.main(folder_args(inp, out, "--finalize")) == 2
    assert "3 (toy-train-000003.tar)" in capsys.readouterr().err
    assert not (out / "train" / "index.json").exists()

    blocked.unlink()
    blocked.write_bytes(real)
    kept = (out / "train" / "toy-train-000000.tar").stat()
    assert folder_prep.main(folder_args(inp, out, "--part", "0/3")) == 0  # the rerun, now the last part
    assert (out / "train" / "toy-train-000000.tar").stat().st_mtime_ns == kept.st_mtime_ns, (
        "chunk 0 was redone"
    )
    reference = split_files(tmp_path / "one" / "train")
    assert sorted(reference) == [
        "index.json", "plan.json", "report.json", *(f"toy-train-{c:06d}.tar" for c in range(4))
    ]  # fmt: skip
    assert split_files(out / "train") == reference
