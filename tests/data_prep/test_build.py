"""The resumable split builder: atomic shards, skip reports, resumption without rewriting, plan checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_prep.build import Item, PlanMismatchError, TooManyErrors, build_split, fingerprint
from interdyn.data.shard_format import SkipSample
from interdyn.utils.files import TMP_SUFFIX


@dataclass
class Maker:
    """Makes a tiny sample per item; skips ids in ``skip``; interrupts at ``stop_at``; records calls."""

    skip: dict = field(default_factory=dict)
    stop_at: str | None = None
    fail: set = field(default_factory=set)
    calls: list = field(default_factory=list)

    def __call__(self, item: Item):
        self.calls.append(item.id)
        if item.id == self.stop_at:
            raise KeyboardInterrupt
        if item.id in self.skip:
            raise SkipSample(self.skip[item.id], "test")
        if item.id in self.fail:
            raise ZeroDivisionError("boom")
        return f"toy-{item.id}", {"txt": item.id.encode(), "json": {"id": item.id}}


def make_items(n: int) -> list[Item]:
    return [Item(f"{i:03d}") for i in range(n)]


def test_build_writes_shards_index_and_report(tmp_path):
    skip = {"001": "too_short", "003": "too_short", "004": "too_short", "005": "missing_video"}
    maker = Maker(skip=skip, fail={"006"})
    result = build_split(tmp_path, "toy", "train", make_items(10), maker, shard_size=3, progress=False)
    folder = tmp_path / "train"
    names = sorted(p.name for p in folder.glob("*.tar"))
    assert names == [f"toy-train-{i:06d}.tar" for i in range(4)]
    assert result.num_samples == 5
    assert result.skipped == {"too_short": 3, "missing_video": 1, "error:ZeroDivisionError": 1}
    report = json.loads((folder / "report.json").read_text())
    assert report["skipped"]["too_short"] == 3
    assert [s["id"] for s in report["skipped_items"]["too_short"]] == ["001", "003", "004"]
    index = json.loads((folder / "index.json").read_text())
    assert index["num_samples"] == 5 and index["shards"] == names
    # chunks of 3 items; chunk 1 (003-005) is all skipped and stays as an empty shard (contiguous names)
    assert index["samples_per_shard"] == [2, 0, 2, 1]
    # the WebDataset reader sees every written sample once, the empty shard included
    keys = [
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in folder.glob("*.tar")), shardshuffle=False)
    ]
    assert sorted(keys) == sorted(f"toy-{i:03d}" for i in (0, 2, 7, 8, 9))


def test_resume_after_interrupt_writes_nothing_twice(tmp_path):
    items = make_items(10)
    first = Maker(stop_at="007")
    with pytest.raises(KeyboardInterrupt):
        build_split(tmp_path, "toy", "train", items, first, shard_size=3, progress=False)
    folder = tmp_path / "train"
    done = sorted(folder.glob("*.tar"))
    assert [p.name for p in done] == ["toy-train-000000.tar", "toy-train-000001.tar"]  # 000-005
    assert not list(folder.rglob(f"*{TMP_SUFFIX}")), "the interrupted shard must not stay half-written"
    assert not (folder / "index.json").exists(), "an unfinished split must have no index"
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}

    second = Maker()
    result = build_split(tmp_path, "toy", "train", items, second, shard_size=3, progress=False)
    assert second.calls == ["006", "007", "008", "009"], "only unfinished chunks are made again"
    assert result.reused_shards == 2 and result.written_shards == 2 and result.num_samples == 10
    for p in done:
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamps[p.name], f"{p.name} was rewritten"
    # a third run has nothing to do
    third = Maker()
    build_split(tmp_path, "toy", "train", items, third, shard_size=3, progress=False)
    assert third.calls == []


def test_a_rerun_removes_the_temporary_files_of_a_killed_run(tmp_path):
    items = make_items(4)
    with pytest.raises(KeyboardInterrupt):
        build_split(tmp_path, "toy", "train", items, Maker(stop_at="003"), shard_size=2, progress=False)
    folder = tmp_path / "train"
    (folder / f"toy-train-000001.tar.otherhost-1{TMP_SUFFIX}").write_bytes(
        b"partial"
    )  # as a SIGKILL leaves it
    result = build_split(tmp_path, "toy", "train", items, Maker(), shard_size=2, progress=False)
    assert not list(folder.rglob(f"*{TMP_SUFFIX}"))
    assert result.num_samples == 4 and json.loads((folder / "index.json").read_text())["num_samples"] == 4


def test_parallel_workers_make_the_same_split(tmp_path):
    items = make_items(9)
    for folder, workers in (("a", 1), ("b", 2)):
        maker = Maker(skip={"002": "x"})
        build_split(
            tmp_path / folder, "toy", "train", items, maker, shard_size=2, workers=workers, progress=False
        )
    for name in ("index.json", "report.json"):
        a = json.loads((tmp_path / "a" / "train" / name).read_text())
        b = json.loads((tmp_path / "b" / "train" / name).read_text())
        a.pop("created", None), b.pop("created", None)
        assert a == b
    for shard in (tmp_path / "a" / "train").glob("*.tar"):
        assert shard.read_bytes().count(b"toy-") == (
            tmp_path / "b" / "train" / shard.name
        ).read_bytes().count(b"toy-")


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    items = make_items(4)
    build_split(
        tmp_path, "toy", "train", items, Maker(), shard_size=2, settings={"masks": "boxes"}, progress=False
    )
    with pytest.raises(PlanMismatchError, match="settings.masks"):
        build_split(
            tmp_path, "toy", "train", items, Maker(), shard_size=2, settings={"masks": "sam2"}, progress=False
        )
    with pytest.raises(PlanMismatchError, match="shard_size"):
        build_split(
            tmp_path,
            "toy",
            "train",
            items,
            Maker(),
            shard_size=3,
            settings={"masks": "boxes"},
            progress=False,
        )
    maker = Maker()
    result = build_split(
        tmp_path,
        "toy",
        "train",
        items[:3],
        maker,
        shard_size=3,
        settings={"masks": "sam2"},
        overwrite=True,
        progress=False,
    )
    assert maker.calls == ["000", "001", "002"] and result.num_shards == 1
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["toy-train-000000.tar"]


def test_strict_reraises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        build_split(tmp_path, "toy", "train", make_items(3), Maker(fail={"001"}), strict=True, progress=False)


def test_shards_with_unexpected_errors_are_retried(tmp_path):
    items = make_items(6)
    first = build_split(tmp_path, "toy", "train", items, Maker(fail={"004"}), shard_size=2, progress=False)
    assert first.num_samples == 5 and first.skipped == {"error:ZeroDivisionError": 1}
    fixed = Maker()
    second = build_split(tmp_path, "toy", "train", items, fixed, shard_size=2, progress=False)
    assert fixed.calls == ["004", "005"], "only the shard with the error is made again"
    assert second.num_samples == 6 and second.skipped == {}


def test_many_errors_in_a_row_stop_the_run(tmp_path):
    items = make_items(8)
    with pytest.raises(TooManyErrors, match="3 videos in a row"):
        build_split(
            tmp_path, "toy", "train", items, Maker(fail={i.id for i in items}), max_errors=3, progress=False
        )
    assert not (tmp_path / "train" / "index.json").exists()


def test_changed_item_data_changes_the_plan(tmp_path):
    items = [Item("a", ("video.mp4", None)), Item("b", ("video.mp4", None))]
    build_split(tmp_path, "toy", "train", items, Maker(), progress=False)
    later = [Item("a", ("video.mp4", "proposal.json")), Item("b", ("video.mp4", None))]  # an input appeared
    with pytest.raises(PlanMismatchError, match="items_sha256"):
        build_split(tmp_path, "toy", "train", later, Maker(), progress=False)
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3.0)) and fingerprint([1, "a"]) == fingerprint(
        (1, "a")
    )


SLOW_PREPARER = """
import os, sys, time
from pathlib import Path
from data_prep.build import Item, build_split

out = Path(sys.argv[1])

def slow(item):
    (out / f"worker-{os.getpid()}").touch()
    time.sleep(120)  # a long video
    return item.id, {"txt": b"x"}

if __name__ == "__main__":
    items = [Item(f"{i:03d}") for i in range(4)]
    build_split(out, "toy", "train", items, slow, shard_size=1, workers=2, progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\\nState:\\tZ" not in status  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_the_preparer_is_killed(tmp_path):
    script = tmp_path / "prep.py"
    script.write_text(SLOW_PREPARER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    try:
        # generous: spawning two interpreters that import numpy takes minutes on a loaded 2-core machine;
        # the loop ends as soon as both workers are up
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "pool workers outlived their killed parent"
    finally:
        parent.kill()
        for p in tmp_path.glob("worker-*"):
            pid = int(p.name.split("-")[1])
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@dataclass
class SlowOrFailing:
    """Item ``000`` fails at once (re-raised with ``strict``); every other item takes minutes."""

    def __call__(self, item: Item):
        if item.id == "000":
            time.sleep(0.5)  # let the other worker start its long item
            raise ZeroDivisionError("boom")
        time.sleep(120)
        return f"toy-{item.id}", {"txt": b"x"}


def test_a_failed_pool_run_stops_the_other_workers_at_once(tmp_path):
    import multiprocessing

    before = set(multiprocessing.active_children())
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError, match="boom"):
        build_split(
            tmp_path, "toy", "train", make_items(3), SlowOrFailing(), shard_size=1, workers=2, strict=True,
            progress=False,
        )  # fmt: skip
    assert time.monotonic() - started < 30  # the two-minute items were not waited for
    # the workers were killed and reaped (the pool's own thread may reap one a moment later; the
    # two-minute items would keep a surviving worker here far longer than this wait)
    deadline = time.monotonic() + 10
    while not set(multiprocessing.active_children()) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(multiprocessing.active_children()) <= before
    assert not list((tmp_path / "train").glob("*.tar"))  # no shard, and no index, from the stopped run
