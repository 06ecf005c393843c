"""Real DDP: two CPU processes on gloo, launched by Lightning from the `interdyn` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import yaml

from interdyn.module import InterDynModule
from tests.conftest import REPO_ROOT


def test_two_process_ddp_on_gloo(tmp_path, synthetic_shards):
    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())
    probe = tmp_path / "probe"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 2,
            "strategy": "ddp",  # gloo on CPU
            "precision": "32-true",
            "max_steps": 3,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "ddp"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0},
                },
                {"class_path": "tests.ddp_probe.RankProbe", "init_args": {"out": str(probe)}},
                # asks trainer.log_dir (a broadcast) at validation end: must not stall the other rank
                {
                    "class_path": "interdyn.callbacks.SampleVideoLogger",
                    "init_args": {"num_videos": 1, "num_inference_steps": 1},
                },
            ],
        },
        "model": demo["model"],
        "data": {
            "class_path": "interdyn.data.ShardDataModule",
            "init_args": {
                **demo["data"]["init_args"],
                "train_shards": str(synthetic_shards / "train" / "*.tar"),
                "val_shards": str(synthetic_shards / "validation" / "*.tar"),
                "test_shards": None,
                "height": 64,
                "width": 64,
                "batch_size": 2,
                "num_workers": 0,
                "persistent_workers": False,
                "pin_memory": False,
            },
        },
    }
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "interdyn.cli", "fit", "--config", str(config_path)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [3, 3]
    # each rank drew its own training stream
    assert all(len(r["train_keys"]) == 3 * 2 for r in ranks)
    assert ranks[0]["train_keys"] != ranks[1]["train_keys"]
    # validation: every sample exactly once over the two ranks, no padding duplicates
    val0, val1 = ranks[0]["val_keys"], ranks[1]["val_keys"]
    assert len(val0) + len(val1) == 10 and not set(val0) & set(val1) and len(set(val0 + val1)) == 10
    # the same weights everywhere after the steps, and they did change
    assert ranks[0]["start_hash"] == ranks[1]["start_hash"]
    assert ranks[0]["end_hash"] == ranks[1]["end_hash"] != ranks[0]["start_hash"]
    # the checkpoint written by rank 0 loads
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["global_step"] == 3
    module = InterDynModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    for key, value in state["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value)
    # the sample video of the validation was written (by rank 0 only)
    gifs = list((tmp_path / "runs").rglob("samples/*.gif"))
    assert len(gifs) == 1, gifs
