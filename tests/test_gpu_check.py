"""`make gpu-check` without a GPU: its dry run on the tiny model, the hard timeout per item, and the
page it writes (sections replaced in place, the rest of the page kept)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import pytest

from tests.conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
spec.loader.exec_module(gpu_check)


def section(page: str, name: str) -> str:
    found = re.search(rf"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", page, flags=re.S)
    assert found, f"no {name} section"
    return found.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of the section's table, without its header and separator lines."""
    rows = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_an_item_past_its_timeout_is_killed_and_reported(tmp_path):
    docs = tmp_path / "benchmarks.md"
    shutil.copyfile(REPO_ROOT / "docs" / "benchmarks.md", docs)
    before = docs.read_text()
    code = gpu_check.main(["--dry_run", "--only", "train:24gb", "--timeout", "2", "--docs", str(docs)])
    assert code == 1
    page = docs.read_text()
    assert table_rows(section(page, "train-cuda")) == [
        ["24gb", "timed out after 2 s", "", "", "", "", "22.0", ""]
    ]
    # the sections it did not measure are left as they were
    for other in ("sample-cuda", "train-analysis", "loader"):
        assert section(page, other) == section(before, other)
    assert not list(tmp_path.glob(".benchmarks.md.tmp-*")), "written through a temporary file"


def test_unknown_item_is_an_error(tmp_path, capsys):
    assert gpu_check.main(["--dry_run", "--only", "train:nope", "--docs", str(tmp_path / "b.md")]) == 2
    assert "unknown items" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_fills_every_row(tmp_path):
    """Every item on CPU with the tiny model: the four training recipes with their batch search, the
    sample with and without compile (aot_eager), the one-device fit + test, and a 2-process gloo DDP fit."""
    docs = tmp_path / "benchmarks.md"
    assert gpu_check.main(["--dry_run", "--docs", str(docs)]) == 0
    page = docs.read_text()
    train = table_rows(section(page, "train-cuda"))
    assert [r[0].split()[0] for r in train] == gpu_check.TRAIN_ORDER  # 24gb may note Adam for 8-bit AdamW
    for row in train:
        assert float(row[2]) > 0 and row[7] == "2", row  # s/step measured; the batch search ran to its end
    sample = table_rows(section(page, "sample-cuda"))
    assert [r[2] for r in sample] == ["no", "yes"] and all(float(r[3]) > 0 for r in sample)
    assert "DDP fit of the tiny model (configs/tiny.yaml): ok" in section(page, "ddp-cuda")
    assert (
        "`interdyn test` with configs/ssv2.yaml's recipe on the tiny model (benchmarks/gpu_smoke.py): ok"
        in (section(page, "ddp-cuda"))
    )
