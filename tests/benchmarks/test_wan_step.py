"""The Wan rows of `make gpu-check` without a GPU: the items and their commands on CUDA, the step and the
sample of benchmarks/wan_step.py on the tiny random Wan on CPU (the code a GPU runs at full size), and the
section they fill."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import pytest
import torch

from tests.benchmarks.test_gpu_check import gpu_check, section, table_rows
from tests.helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("wan_step", REPO_ROOT / "benchmarks" / "wan_step.py")
wan_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wan_step)
wan_recipes = sys.modules["wan_recipes"]  # loaded by gpu_check and wan_step from benchmarks/


def test_cuda_items_time_both_shipped_wan_recipes_capped_at_their_cards(tmp_path):
    items = gpu_check.build_items(argparse.Namespace(dry_run=False, scratch=str(tmp_path)), "python", 1)
    wan = {i.name: i for i in items if i.section == "wan"}
    assert list(wan) == ["wan:2x80gb", "wan:48gb", "wan:sample"]
    for name in ("2x80gb", "48gb"):
        cmd = wan[f"wan:{name}"].cmd
        assert cmd[1].endswith("wan_step.py") and "--tiny" not in cmd
        assert cmd[cmd.index("--recipe") + 1] == name and cmd[cmd.index("--device") + 1] == "cuda"
        card = wan_recipes.CARD_GIB[wan_recipes.WAN_RECIPES[name]["card"]]
        assert float(cmd[cmd.index("--budget_gib") + 1]) == pytest.approx(card - 0.5)
    assert wan["wan:sample"].cmd[-2:] == ["--sample", "50"]
    # the shipped configs are what the CUDA rows time
    assert set(wan_recipes.WAN_CONFIG_RECIPES.values()) == set(wan_recipes.WAN_GPU_RECIPES)


@pytest.fixture
def one_thread():
    """One thread, as each `make test` worker (two threads on a loaded 2-core machine run several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_wan_step_and_sample_run_on_cpu(capsys, one_thread):
    """The 48 GB recipe's code path (checkpointing, cached latents, Adam's moments in host memory) and the
    2 x 80 GB one (the VAE encoding in the step, fused-or-plain Adam) train the tiny branch for one step
    each; a 2-step video samples."""
    for recipe in ("48gb", "2x80gb"):
        args = [
            "--device",
            "cpu",
            "--tiny",
            "--recipe",
            recipe,
            "--steps",
            "1",
            "--warmup",
            "0",
            "--accumulate",
            "2",
        ]
        assert wan_step.main(args) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["wan_recipe"] == recipe and row["accumulate"] == 2 and row["clip"] == "5x64x64"
        assert row["seconds_per_step"] > 0 and row["loss"] > 0
        assert row["batch"] == wan_recipes.WAN_RECIPES[recipe]["batch"]
    assert wan_step.main(["--device", "cpu", "--tiny", "--sample", "2"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["wan_sample"] == 2 and row["seconds"] > 0


def test_the_wan_section_lists_each_recipe_and_the_video(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    items = [i for i in gpu_check.build_items(argparse.Namespace(dry_run=True, scratch=str(tmp_path)), "python", 0)
             if i.section == "wan"]  # fmt: skip
    items[0].status, items[0].records = (
        "ok",
        [
            {
                "wan_recipe": "2x80gb",
                "batch": 2,
                "accumulate": 2,
                "seconds_per_step": 3.2,
                "clips_per_second": 1.25,
                "peak_gib": 61.0,
                "reserved_gib": 64.5,
            }  # fmt: skip
        ],
    )
    items[1].status, items[1].records = (
        "ok",
        [{"wan_recipe": "48gb", "out_of_memory": True, "peak_gib": 43.9}],
    )
    items[2].status, items[2].records = "ok", [{"wan_sample": 50, "seconds": 21.5, "peak_gib": 30.2}]
    gpu_check.write_page(items, argparse.Namespace(dry_run=True, only=None), docs, gpus=0)
    text = section(docs.read_text(), "wan-cuda")
    assert table_rows(text) == [
        ["2x80gb", "2 x 2", "3.20", "1.25", "61.0", "64.5", "78.6"],
        ["48gb", "out of memory", "", "", "", "", "44.0"],
    ]
    assert "50 steps: 21.5 s per video, peak 30.2 GiB" in text
