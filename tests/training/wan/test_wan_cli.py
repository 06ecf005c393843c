"""``interdyn fit`` and ``interdyn test`` on the Wan backbone through the real command (configs/wan_tiny.yaml),
the command's choice of module, and the shipped SSV2 config."""

from __future__ import annotations

import torch

from interdyn.commands.cli import names_model_class
from interdyn.commands.config import read_config
from interdyn.data.clip_spec import WAN_SSV2_CLIP, ClipSpec
from interdyn.models.wan.components import WAN_TI2V_REPO
from interdyn.training.checkpoint import BRANCH_PREFIX, load_checkpoint
from interdyn.training.wan_module import WAN_BACKBONE
from tests.helpers import REPO_ROOT, run_interdyn

TINY = str(REPO_ROOT / "configs" / "wan_tiny.yaml")
SSV2 = str(REPO_ROOT / "configs" / "wan_ssv2.yaml")
# two steps on the smallest Wan clips (5 frames of 32 x 32), one clip to validate and one to test
SHORT = [
    *("--trainer.max_steps", "2", "--trainer.val_check_interval", "2"),
    *("--data.init_args.num_train", "4", "--data.init_args.num_val", "1", "--data.init_args.num_test", "1"),
    *("--data.init_args.num_frames", "5", "--data.init_args.height", "32", "--data.init_args.width", "32"),
]


def test_fit_then_test_the_tiny_wan_through_the_command(tmp_path, monkeypatch, capsys):
    fit = run_interdyn("fit", "--config", TINY, *SHORT, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert fit.returncode == 0, fit.stderr[-2000:]
    run = tmp_path / "runs" / "wan_tiny" / "version_0"
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2 and checkpoint["interdyn_backbone"] == WAN_BACKBONE
    assert all(k.startswith(BRANCH_PREFIX) for k in checkpoint["state_dict"])
    assert list((run / "samples").glob("step_*.gif"))  # the video logger sampled through the Wan pipeline
    assert names_model_class(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])

    test = run_interdyn(
        "test",
        "--config",
        TINY,
        "--ckpt_path",
        "last",
        *SHORT[4:],
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert test.returncode == 0, test.stderr[-2000:]
    assert "test/mask_mse" in test.stdout and "test/loss" in test.stdout


def test_a_clip_wan_cannot_take_is_one_sentence(tmp_path, monkeypatch, capsys):
    done = run_interdyn(
        "fit", "--config", TINY, "--data.init_args.num_frames", "8",
        cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert done.returncode == 2
    assert "the data's clip has 8 frames, but Wan2.2 TI2V needs 1 + 4k frames" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_command_takes_the_module_a_config_names():
    assert names_model_class(["fit", "--config", TINY])
    assert not names_model_class(["fit", "--config", str(REPO_ROOT / "configs" / "tiny.yaml")])
    assert not names_model_class(["fit", "--model.svd", "random:tiny"])
    assert names_model_class(["fit", "--model.class_path", "interdyn.training.wan_module.InterDynWanModule"])


def test_the_ssv2_config_parses_with_wan_s_clip_and_recipe():
    config = read_config([SSV2])
    model = config["model"]["init_args"]
    assert config["model"]["class_path"].endswith("InterDynWanModule") and model["wan"] == WAN_TI2V_REPO
    assert model["memory"]["frozen_dtype"] == "bfloat16" and model["memory"]["gradient_checkpointing"]
    assert config["trainer"]["precision"] == "bf16-mixed" and "strategy" in config["trainer"]
    clip = ClipSpec.from_mapping(config["data"]["init_args"]["clip"])
    assert clip == WAN_SSV2_CLIP and (clip.num_frames, clip.fps) == (49, 12.0)
    assert (clip.num_frames - 1) % 4 == 0 and clip.height % 32 == 0 and clip.width % 32 == 0


def test_wan_clips_are_read_from_the_same_shards_and_train(synthetic_shards):
    """The world's shards (30 frames at 14 fps, 64x96) give Wan's 1 + 4k frames at a multiple of 32, which the
    module trains on."""
    from interdyn.data.datamodule import ShardDataModule
    from tests.training.wan.helpers import tiny_wan_module

    clip = {"num_frames": 13, "fps": 14.0, "height": 64, "width": 96}
    data = ShardDataModule(val_shards=str(synthetic_shards / "validation" / "*.tar"), clip=clip, num_workers=0,
                           batch_size=2)  # fmt: skip
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert batch["pixel_values"].shape[1:] == (13, 3, 64, 96) and batch["control"].shape[2] == 3
    assert batch["control"].amax() == 1.0 and batch["control"].amin() == -1.0  # driver masks in {-1, 1}
    loss = tiny_wan_module().training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
