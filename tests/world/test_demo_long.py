"""`make demo-long`'s rows and table (cheap), and a tiny run of it on the shipped world (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from interdyn.world.demo_long import rows
from interdyn.world.long_report import later_over_first, long_table

ROOT = Path(__file__).resolve().parents[2]
SPANS = [(0, 14), (10, 24), (20, 34), (24, 38)]


def _result(*errors: float, seam: float = 1.2) -> dict[str, float]:
    out = {f"physics_position_error_window_{i + 1}": e for i, e in enumerate(errors)}
    return out | {
        "physics_position_error": sum(errors) / len(errors),
        "physics_found": 0.5,
        "seam_score": seam,
    }


def test_rows_are_the_issues_comparison_and_a_context_branch_adds_one() -> None:
    plain = rows("weights/world/branch")
    assert [r.overrides["continuation"] for r in plain] == ["hold", "single", "chain", "hold"]
    assert plain[0].branch is None and plain[0].overrides["conditioning_scale"] == 0.0
    assert len({r.name for r in plain}) == len(plain)
    context = rows("weights/world/branch", "runs/context/weights")[-1]
    assert context.branch == "runs/context/weights" and context.overrides == {"continuation": "context"}


def test_later_windows_over_the_first() -> None:
    assert later_over_first(_result(2.0, 3.0, 5.0, 4.0), 4) == pytest.approx(2.0)
    # a window where no disc was found is left out; without window 1 there is no ratio
    assert later_over_first(_result(2.0, math.nan, 4.0, 4.0), 4) == pytest.approx(2.0)
    assert math.isnan(later_over_first(_result(math.nan, 3.0, 5.0, 4.0), 4))


def test_long_table_has_a_row_per_model_and_a_column_per_window() -> None:
    results = {
        "chain": _result(2.0, 6.0, 8.0, 8.0, seam=2.5),
        "hold": _result(2.0, 3.0, 3.0, 3.0) | {"fvd": 812.34},
    }
    text = long_table(results, SPANS, {"chain": 61.2, "hold": 64.0})
    lines = text.splitlines()
    assert lines[0].startswith("| model | window 1 (frames 0-13) | window 2 (frames 10-23)")
    assert "window 4 (frames 24-37)" in lines[0] and "FVD (windows)" in lines[0]
    assert lines[2] == "| chain | 2.00 | 6.00 | 8.00 | 8.00 | 6.00 | 0.50 | 3.67 | 2.50 | - | 61 |"
    assert lines[3].endswith("| 1.50 | 1.20 | 812.3 | 64 |")
    assert "FVD" not in long_table({"hold": _result(1.0, 1.0)}, SPANS[:2])


@pytest.mark.slow
def test_demo_long_runs_end_to_end_on_the_shipped_world(tmp_path: Path) -> None:
    from data_prep import synthetic
    from interdyn.world import demo_long

    args = "--builtin_world --size 64 64 --fps 7 --train 0 --val 0 --test_groups 0 --long 1 --long_frames 20"
    assert synthetic.main(["--out", str(tmp_path / "world"), *args.split()]) == 0
    out = tmp_path / "demo"
    argv = [
        "--out", str(out), "--shards", str(tmp_path / "world" / "long" / "*.tar"), "--clips", "1",
        "--num_frames", "20", "--steps", "1", "--svd", str(ROOT / "weights/world/svd"),
        "--branch", str(ROOT / "weights/world/branch"),
    ]  # fmt: skip
    assert demo_long.main(argv) == 0
    table = (out / "table.md").read_text()
    for title in ("single", "chain", "hold", "no control", demo_long.TRUTH_ROW):
        assert title in table
    results = json.loads((out / "results.json").read_text())
    assert results["windows"] == [[0, 14], [6, 20]]
    assert results["rows"][demo_long.TRUTH_ROW]["physics_position_error_window_2"] < 3
    assert (out / "long_contact_sheet.png").stat().st_size > 0 and (out / "long_side_by_side.mp4").exists()
    assert sorted(p.name for p in (out / "hold").glob("*.mp4")) == ["synthetic-long-000000.mp4"]
