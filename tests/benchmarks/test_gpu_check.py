"""`make gpu-check` without a GPU: its dry run on the tiny model, the hard timeout per item, and the
page it writes (sections replaced in place, the rest of the page kept)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys

import pytest
import yaml

from tests.helpers import REPO_ROOT

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


spec = importlib.util.spec_from_file_location("gpu_smoke", REPO_ROOT / "benchmarks" / "gpu_smoke.py")
gpu_smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_smoke)


def cuda_items(tmp_path, gpus: int) -> list:
    return gpu_check.build_items(argparse.Namespace(dry_run=False, scratch=str(tmp_path)), "python", gpus)


def test_the_items_run_by_value_and_their_limits_fit_the_budget(tmp_path):
    items = cuda_items(tmp_path, gpus=2)
    names = [i.name for i in items]
    # the real runs of the paper's recipe first, the recipes' figures next, the optional compile last
    assert names[:3] == ["smoke", "ddp", "train:recommended"]
    assert names[-1] == "sample:compile" and gpu_check.OPTIONAL == {"sample:compile"}
    # each backbone's items are one command that fits a lent GPU node's 10 minutes
    svd = [i for i in items if i.name not in gpu_check.OPTIONAL | gpu_check.WAN_ITEMS]
    wan = [i for i in items if i.name in gpu_check.WAN_ITEMS]
    assert len(wan) == 3 and svd[0].name == "smoke"
    assert sum(i.timeout for i in svd) + gpu_check.PROBE_S <= gpu_check.DEFAULT_BUDGET_S <= 480
    assert sum(i.timeout for i in wan) + gpu_check.PROBE_S <= gpu_check.WAN_BUDGET_S <= 300
    args = argparse.Namespace(only=None, backbone=None, dry_run=False)
    chosen = gpu_check.select_items(cuda_items(tmp_path, gpus=2), args)
    assert [i.name for i in chosen if i.status == "not run"] == [i.name for i in svd]
    args = argparse.Namespace(only=None, backbone="wan", dry_run=False)
    chosen = gpu_check.select_items(cuda_items(tmp_path, gpus=2), args)
    assert [i.name for i in chosen if i.status == "not run"] == [i.name for i in wan]
    # with one GPU there is no DDP item, and the others keep their places
    assert [i.name for i in cuda_items(tmp_path, gpus=1)] == [n for n in names if n != "ddp"]
    ddp = items[1]
    assert ddp.cmd[1].endswith("gpu_smoke.py") and ddp.cmd[ddp.cmd.index("--devices") + 1] == "2"
    assert ddp.cmd[ddp.cmd.index("--device") + 1] == "cuda"


def test_the_ddp_item_runs_the_paper_recipe_of_ssv2_yaml(tmp_path):
    """The 2-process item keeps configs/ssv2.yaml's trainer: bf16-mixed, its DDP strategy with bucket
    views, checkpoints, validation and the test callbacks; only the scale is the tiny model's."""
    config = gpu_smoke.smoke_config(
        REPO_ROOT / "configs" / "ssv2.yaml", tmp_path / "shards", tmp_path / "runs", "cuda", devices=2
    )
    original = yaml.safe_load((REPO_ROOT / "configs" / "ssv2.yaml").read_text())
    trainer = config["trainer"]
    assert trainer["devices"] == 2 and trainer["accelerator"] == "gpu"
    assert trainer["strategy"] == original["trainer"]["strategy"]
    assert trainer["strategy"]["init_args"]["gradient_as_bucket_view"] is True
    assert trainer["precision"] == "bf16-mixed" and trainer["gradient_clip_val"] == 1.0
    assert trainer["val_check_interval"] == 2 and trainer["limit_val_batches"] == 2
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]]
    assert {"ModelCheckpoint", "SampleVideoLogger", "VideoEvaluation"} <= set(callbacks)
    model, memory = config["model"], config["model"]["memory"]
    assert model["optimizer"] == original["model"]["optimizer"]
    for switch in ("frozen_dtype", "gradient_checkpointing", "unet_gradient_checkpointing"):
        assert memory[switch] == original["model"]["memory"][switch]
    data = config["data"]["init_args"]
    assert data["test_shards"].endswith("test/*.tar") and data["val_shards"].endswith("validation/*.tar")
    assert data["epoch_samples"] == 16  # 8 clips per process, as the one-GPU run
    one = gpu_smoke.smoke_config(REPO_ROOT / "configs" / "ssv2.yaml", tmp_path, tmp_path, "cpu")
    assert one["trainer"]["strategy"] == "auto" and one["trainer"]["devices"] == 1


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


@pytest.mark.slow  # every item on CPU: bf16 is emulated there, and the DDP run starts two processes
def test_dry_run_fills_every_row(tmp_path):
    """Every default item on CPU with the tiny model: the one-device fit + test and the same as 2 gloo
    processes (configs/ssv2.yaml's recipe), the four training recipes with their batch search, the sample;
    the compiled sample is optional and says so."""
    docs = tmp_path / "benchmarks.md"
    assert gpu_check.main(["--dry_run", "--docs", str(docs)]) == 0
    page = docs.read_text()
    train = table_rows(section(page, "train-cuda"))
    assert [r[0].split()[0] for r in train] == gpu_check.TRAIN_ORDER
    for row in train:
        assert float(row[2]) > 0 and row[7] == "2", row  # s/step measured; the batch search ran to its end
    sample = table_rows(section(page, "sample-cuda"))
    assert [r[2] for r in sample] == ["no", "yes"] and float(sample[0][3]) > 0
    assert sample[1][3] == "not run (optional: --only sample:compile)"
    real = section(page, "ddp-cuda")
    assert real.count("with configs/ssv2.yaml's recipe on the tiny model, from shards") == 2
    assert "2-process DDP (NCCL; gloo in the dry run) `interdyn fit`" in real
    assert real.count("(benchmarks/gpu_smoke.py): ok") == 2
    assert "strategy DDPStrategy (gradient_as_bucket_view)" in real


@pytest.mark.slow  # two gloo processes, bf16 emulated
def test_two_process_smoke_fits_and_tests_with_the_ssv2_recipe(tmp_path, capsys):
    """The DDP item itself on CPU: `interdyn fit` and `interdyn test` as 2 gloo processes with
    configs/ssv2.yaml's strategy (bucket views), bf16-mixed, checkpoints, validation and the test table."""
    assert gpu_smoke.main(["--device", "cpu", "--devices", "2", "--scratch", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["devices"] == 2 and report["strategy"] == "DDPStrategy (gradient_as_bucket_view)"
    assert report["metrics"]["num_videos"] == 4  # both test groups of 2 clips, split over the 2 ranks
    assert (tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt").exists()
