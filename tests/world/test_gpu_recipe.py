"""`make world-gpu`'s stages chain on CPU: the overlays of configs/world/gpu, one step each with the
accelerator set to CPU, write the larger world under weights/world-gpu (each stage reading what the one
before wrote) and leave the shipped CPU world alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interdyn.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_recipe_chains_its_stages(
    synthetic_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # every relative path of the configs lands here
    cpu = [
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "1",
        "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    data = [
        "--data.init_args.train_shards", str(synthetic_shards / "train/*.tar"),
        "--data.init_args.val_shards", str(synthetic_shards / "validation/*.tar"),
        "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0",
        "--data.init_args.epoch_samples", "2",
    ]  # fmt: skip

    def stage(base: str, overlay: str, world: bool = True) -> None:
        configs = ["--config", str(ROOT / base), "--config", str(ROOT / "configs/world/gpu" / overlay)]
        main((["world", "fit"] if world else ["fit"]) + configs + cpu + data)

    stage("configs/world/vae.yaml", "vae.yaml")
    vae = json.loads((tmp_path / "weights/world-gpu/vae/config.json").read_text())
    assert vae["block_out_channels"] == [128, 128, 128]

    stage("configs/world/base.yaml", "base.yaml")
    svd = tmp_path / "weights/world-gpu/svd"
    unet = json.loads((svd / "unet/config.json").read_text())
    assert unet["block_out_channels"] == [64, 128, 128, 256]
    # the SVD folder carries the stage-1 VAE it was trained on
    assert json.loads((svd / "vae/config.json").read_text())["scaling_factor"] == vae["scaling_factor"]

    stage("configs/demo.yaml", "branch.yaml", world=False)
    assert (tmp_path / "runs/world_gpu_branch/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "weights/world").exists()  # nothing written where the shipped world lives
