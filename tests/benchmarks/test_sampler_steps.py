"""`benchmarks/sampler_steps.py`: each (sampler, steps) point is a real `interdyn test` run of the shipped
world branch with those settings; the table and plot are written, and a rerun reads finished points."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("sampler_steps", REPO_ROOT / "benchmarks" / "sampler_steps.py")
sampler_steps = importlib.util.module_from_spec(spec)
sys.modules["sampler_steps"] = sampler_steps
spec.loader.exec_module(sampler_steps)


def test_the_plot_puts_a_lower_value_lower() -> None:
    rows = [
        {"scheduler": "euler", "steps": 4, "ssim": 0.5},
        {"scheduler": "euler", "steps": 16, "ssim": 0.9},
    ]
    image = sampler_steps.panel(rows, "ssim", "SSIM")
    colour = np.array(sampler_steps.COLOURS["euler"])
    ys, xs = np.nonzero((image == colour).all(axis=-1))
    left, right = ys[xs < xs.mean()].mean(), ys[xs > xs.mean()].mean()
    assert left > right, "the 4-step point (SSIM 0.5) is drawn below the 16-step one (0.9)"


@pytest.mark.slow
def test_points_are_test_runs_with_their_settings_and_resume(
    synthetic_shards: Path, random_i3d_weights: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.yaml"
    data.write_text(
        yaml.safe_dump({"data": {"init_args": {"test_shards": str(synthetic_shards / "test/*.tar")}}})
    )
    doc, plot, out = tmp_path / "benchmarks.md", tmp_path / "steps.png", tmp_path / "runs"
    argv = [
        *("--config", "configs/demo.yaml", str(data)),
        *("--schedulers", "euler", "dpmpp_2m", "--steps", "2", "--limit_test_batches", "1"),
        *(
            "--i3d_weights",
            str(random_i3d_weights),
            "--out",
            str(out),
            "--doc",
            str(doc),
            "--plot",
            str(plot),
        ),
    ]
    assert sampler_steps.main(argv) == 0

    for scheduler in ("euler", "dpmpp_2m"):
        protocol = json.loads((out / f"{scheduler}_2/test/metrics.json").read_text())["protocol"]
        assert (protocol["sampler"], protocol["sampling_steps"], protocol["videos"]) == (scheduler, 2, 4)
        # the counterfactual test ran on the same clips (its accuracy is the table's last column)
        assert (
            json.loads((out / f"{scheduler}_2/test/counterfactual.json").read_text())["overall"]["members"]
            >= 2
        )
    section = re.search(r"<!-- sampler-steps:begin -->(.*)<!-- sampler-steps:end -->", doc.read_text(), re.S)
    rows = [
        line.split("|")[1:3] for line in section.group(1).splitlines() if re.match(r"\| (euler|dpm)", line)
    ]
    assert [[cell.strip() for cell in row] for row in rows] == [["euler", "2"], ["dpmpp_2m", "2"]]
    header = next(line for line in section.group(1).splitlines() if line.startswith("| sampler"))
    assert header.rstrip(" |").endswith("counterf. acc.")
    assert all(
        re.search(r"\| (0|1|0\.\d+) \|$", line)
        for line in section.group(1).splitlines()
        if re.match(r"\| (euler|dpm)", line)
    )
    assert Image.open(plot).size == (900, 220)

    # a rerun reads the finished points instead of sampling again
    stamps = [p.stat().st_mtime_ns for p in sorted(out.glob("*/test/metrics.json"))]
    assert sampler_steps.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("*/test/metrics.json"))] == stamps
