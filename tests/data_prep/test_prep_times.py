"""A preparer's time by phase: a real small build of the built-in dataset (``python -m data_prep.synthetic``)
ends with one table, printed by the main process only, whose phases add up to its total."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.build import INDEXING, PLANNING
from data_prep.common import STARTUP
from data_prep.synthetic import main as synthetic_main
from tests.helpers import phase_table

TINY = ["--size", "32", "32", "--frames", "8", "--shard_size", "2", "--variants", "2"]


def build(out: Path, capfd: pytest.CaptureFixture, *extra: str) -> str:
    """Run the preparer; its whole output, pool workers' included (file descriptors, not sys.stdout)."""
    capfd.readouterr()
    args = ["--out", str(out), "--train", "4", "--val", "2", "--test_groups", "1", *TINY, *extra]
    assert synthetic_main(args) == 0
    return capfd.readouterr().out


def assert_adds_up(rows: dict[str, tuple[float, str]]) -> None:
    """The phases (each rounded to 0.1 s) cover the total: nothing left over as `other`."""
    assert "other" not in rows
    phases = sum(seconds for name, (seconds, _) in rows.items() if name != "total")
    assert abs(phases - rows["total"][0]) <= 0.06 * len(rows) + 0.05 * rows["total"][0] + 0.2


def test_a_build_ends_with_its_time_by_phase_once(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    printed = build(tmp_path, capfd, "--workers", "2")  # a pool of two processes makes the shards
    assert printed.count("time by phase") == 1  # the main process's table; the workers print none
    assert printed.rstrip().splitlines()[-1].lstrip().startswith("total")  # at the very end
    title, rows = phase_table(printed)
    assert title == "data_prep.synthetic"
    assert list(rows) == [
        STARTUP, PLANNING, "building train", INDEXING, "building validation", "building test", "total",
    ]  # fmt: skip
    assert rows[PLANNING][1] == rows[INDEXING][1] == "3 runs"  # one per split
    for split, clips in (("train", 4), ("validation", 2), ("test", 2)):  # test: 1 group of 2 variants
        seconds, note = rows[f"building {split}"]
        assert seconds >= 0 and note.startswith(f"{clips} clips, ") and note.endswith(" clips/s")
        assert float(note.split(", ")[1].split()[0]) > 0  # the rate
    assert_adds_up(rows)


def test_a_rerun_says_what_it_kept(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    build(tmp_path, capfd, "--train", "2", "--val", "0", "--test_groups", "0")
    title, rows = phase_table(build(tmp_path, capfd, "--train", "2", "--val", "0", "--test_groups", "0"))
    assert rows["building train"][1] == "0 clips, 1 shard(s) kept from an earlier run"
    assert_adds_up(rows)
