"""The Wan2.2 TI2V-5B training recipes as shipped, on the tiny random Wan and CPU: configs/wan_ssv2.yaml's
(2 x 80 GB: DDP with bucket views, bf16-mixed, bf16 frozen transformer, checkpointing of both networks) as
two real gloo processes, and the one-card overlay configs/wan_48gb.yaml (Adam's moments in host memory,
8 accumulated micro-batches of one clip) as one. Lightning's FSDP strategy needs a GPU accelerator (it
refuses ``accelerator='cpu'``), so no recipe that names it could run here; neither needs it (their memory:
docs/benchmarks.md, "Wan2.2 TI2V-5B: memory and FLOPs per training step")."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from interdyn.commands.cli import main
from interdyn.commands.config import read_config
from interdyn.training.optim_offload import HostMoments, OffloadedAdam
from tests.commands.ddp_probe import ranks_trained_in_sync
from tests.commands.test_ddp import launch
from tests.helpers import REPO_ROOT

WAN_SSV2 = REPO_ROOT / "configs" / "wan_ssv2.yaml"
WAN_48GB = REPO_ROOT / "configs" / "wan_48gb.yaml"
SEEN: dict[str, list] = {}  # what OptimizerProbe saw in this process


class OptimizerProbe(pl.Callback):
    """Records the optimizer, its state after the first step, and every micro-batch's size."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx
    ) -> None:
        SEEN.setdefault("micro_batches", []).append(batch["control"].shape[0])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        SEEN["optimizer"] = [trainer.optimizers[0]]


def tiny(config: dict, shards: Path, runs: Path, name: str) -> dict:
    """The config's trainer and model recipe at the tiny random Wan's scale: 2 optimizer steps on CPU from
    the test shards (5 frames at 64x64), sampling in one step."""
    trainer = config["trainer"]
    trainer.update(
        accelerator="cpu", max_steps=2, val_check_interval=None, limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False,
        logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(runs), "name": name}},
    )  # fmt: skip
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(every_n_train_steps=1)
        if callback["class_path"].endswith("SampleVideoLogger"):
            callback["init_args"].update(num_videos=1, num_inference_steps=1)
    init = config["model"]["init_args"]
    init.update(wan="random:wan-tiny", conditioning_embedding_out_channels=[8, 8, 8, 16])
    init["sampling"] = {**init.get("sampling", {}), "num_inference_steps": 1}
    data = config["data"]["init_args"]
    data.update(
        train_shards=str(shards / "train" / "*.tar"), val_shards=str(shards / "validation" / "*.tar"),
        test_shards=str(shards / "test" / "*.tar"), clip={**data.get("clip", {}), "num_frames": 5, "height": 64,
        "width": 64}, num_workers=0, persistent_workers=False, pin_memory=False, shuffle_buffer=1,
    )  # fmt: skip
    return config


def check_overlay(base: dict, one: dict) -> None:
    """The 48 GB overlay changes only its switches: one device, no DDP, 8 accumulated clips, Adam's moments
    in host memory; the precision, clipping, memory switches and clip stay wan_ssv2.yaml's."""
    assert base["trainer"]["devices"] == 2 and base["trainer"]["strategy"]["class_path"].endswith(
        "DDPStrategy"
    )
    assert one["trainer"]["devices"] == 1 and one["trainer"]["strategy"] == "auto"
    # the paper's 8 clips per optimizer step, as 8 accumulated micro-batches of one clip
    assert one["trainer"]["accumulate_grad_batches"] == 8 and one["data"]["init_args"]["batch_size"] == 1
    assert one["model"]["init_args"]["optimizer"] == "adam_offload"
    assert base["model"]["init_args"]["optimizer"] == "adam"
    for key in ("precision", "gradient_clip_val", "max_steps"):
        assert one["trainer"][key] == base["trainer"][key]
    assert one["model"]["init_args"]["memory"] == base["model"]["init_args"]["memory"]
    assert one["data"]["init_args"]["clip"] == base["data"]["init_args"]["clip"]


def test_the_48gb_recipe_trains_on_the_tiny_wan(tmp_path, synthetic_shards, monkeypatch):
    """The overlay as written (its optimizer, accumulation and micro-batch; bf16-mixed, the bf16 frozen
    transformer and checkpointing from wan_ssv2.yaml): one optimizer step of 8 micro-batches of one clip,
    with Adam's moments in host memory."""
    monkeypatch.chdir(tmp_path)
    config = tiny(read_config([WAN_SSV2, WAN_48GB]), synthetic_shards, tmp_path / "runs", "wan_48gb")
    config["trainer"].update(max_steps=1)
    config["trainer"]["callbacks"].append({"class_path": "tests.commands.test_wan_ddp.OptimizerProbe"})
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(config))
    SEEN.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", str(tmp_path / "one.yaml")])
    finally:
        torch.set_num_threads(threads)
    assert SEEN["micro_batches"] == [1] * 8
    optimizer = SEEN["optimizer"][0]
    assert isinstance(optimizer, OffloadedAdam)
    assert all(
        float(s["step"]) == 1 and isinstance(s["moments"], HostMoments) for s in optimizer.state.values()
    )
    last = tmp_path / "runs" / "wan_48gb" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["global_step"] == 1 and all(k.startswith("controlnet.") for k in state["state_dict"])


@pytest.mark.slow  # two gloo processes building the tiny Wan, bf16 emulated on CPU
def test_the_2x80gb_recipe_runs_on_two_processes(tmp_path, synthetic_shards):
    """configs/wan_ssv2.yaml's trainer and model recipe as two processes, with a moving average: each rank
    draws its own clips, the branch's weights and their average stay in sync and change, the checkpoint
    holds the branch and its average only; then `interdyn test` on both ranks scores every test clip once."""
    config = tiny(read_config([WAN_SSV2]), synthetic_shards, tmp_path / "runs", "wan_ssv2")
    trainer = config["trainer"]
    assert (
        trainer["devices"] == 2 and trainer["precision"] == "bf16-mixed" and trainer["gradient_clip_val"] > 0
    )
    assert trainer["strategy"]["class_path"].endswith(".DDPStrategy")
    assert trainer["strategy"]["init_args"]["gradient_as_bucket_view"] is True
    memory = config["model"]["init_args"]["memory"]
    assert memory["frozen_dtype"] == "bfloat16"
    assert memory["gradient_checkpointing"] and memory["transformer_gradient_checkpointing"]
    memory["fused_optimizer"] = True  # as on CUDA
    config["model"]["init_args"]["ema_decay"] = 0.9  # the average too: each rank updates its own copy
    config["data"]["init_args"].update(batch_size=1, eval_batch_size=1)
    probe = tmp_path / "probe"
    trainer["callbacks"].append(
        {"class_path": "tests.commands.ddp_probe.RankProbe", "init_args": {"out": str(probe)}}
    )
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    result = launch("-m", "tests.commands.test_wan_ddp", "--config", str(tmp_path / "two.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = ranks_trained_in_sync(probe, steps=2)
    assert ranks[0]["ema_hash"] == ranks[1]["ema_hash"] not in ("", ranks[0]["end_hash"])
    test0, test1 = ranks[0]["test_keys"], ranks[1]["test_keys"]
    assert len(test0) == len(test1) == 2 and len(set(test0 + test1)) == 4
    last = tmp_path / "runs" / "wan_ssv2" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["global_step"] == 2 and all(k.startswith("controlnet.") for k in state["state_dict"])
    assert set(state["interdyn_branch_ema"]) == {k.removeprefix("controlnet.") for k in state["state_dict"]}


def fit_and_test(argv: list[str]) -> None:
    """What each rank runs (Lightning's launcher starts the second with the same command): the CLI with the
    module the config names, then fit and test on the same trainer (tests/commands/ddp_probe.py's, for any
    module)."""
    import lightning as L

    from interdyn.commands.cli import InterDynCLI

    cli = InterDynCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        args=argv, save_config_kwargs={"overwrite": True},
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    fit_and_test(sys.argv[1:])
