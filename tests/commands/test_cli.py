"""The `interdyn` command on the tiny config, in this process through the entry point the installed command
calls (``main``), which saves the seconds of importing the stack anew; the command as a process, with its
exit code, is tested once (tests/commands/test_generate_inputs.py)."""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch
import yaml

from interdyn.commands.config import read_config
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
FAST = [
    "--data.init_args.num_frames",
    "2",
    "--data.init_args.num_train",
    "4",
    "--data.init_args.num_val",
    "2",
]


def test_help_lists_the_subcommands(tmp_path, run):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in result.stdout


def test_print_config_shows_the_tiny_setup(tmp_path, run):
    result = run("fit", "--config", TINY, "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["svd"]["unet"]["block_out_channels"] == [32, 32, 64, 64]
    assert config["model"]["learning_rate"] == 1e-4
    assert config["data"]["class_path"] == "interdyn.data.MovingShapesDataModule"


def test_fast_dev_run(tmp_path, run):
    result = run("fit", "--config", TINY, "--trainer.fast_dev_run", "true", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def fit_for(max_steps: int) -> list[str]:
    """``interdyn fit`` of the tiny config for ``max_steps`` steps, validating every 2."""
    steps = ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", "2"]
    return ["fit", "--config", TINY, *steps, *FAST]


def test_fit_then_resume_from_checkpoint(tmp_path, run):
    first = run(*fit_for(2), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt_path = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"] and all(k.startswith("controlnet.") for k in checkpoint["state_dict"])
    assert checkpoint["optimizer_states"]
    assert (tmp_path / "runs" / "tiny" / "version_0" / "config.yaml").is_file()
    # the run ends with its time by phase (interdyn.callbacks.timing)
    table = (first.stdout + first.stderr).split("interdyn fit: time by phase", 1)[-1]
    assert "(2 steps," in table and "setup (weights, data)" in table and "total" in table

    second = run(*fit_for(4), "--ckpt_path", str(ckpt_path), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(2 steps," in (second.stdout + second.stderr).split("time by phase", 1)[-1]  # 2 -> 4
    resumed = torch.load(
        tmp_path / "runs" / "tiny" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert resumed["global_step"] == 4
    changed = [k for k, v in resumed["state_dict"].items() if not torch.equal(v, checkpoint["state_dict"][k])]
    assert changed  # it trained on from there

    # The Lightning checkpoint also loads outside the CLI, rebuilding the frozen parts from `svd`.
    module = InterDynModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value)


def test_without_a_logger_the_config_goes_beside_the_checkpoints(tmp_path, run):
    """``interdyn fit --trainer.logger false``: config.yaml lands beside the checkpoints, in the checkpoint
    callback's folder or, without one, in ``checkpoints/`` where Lightning puts them; never loose in the
    working directory (Lightning's fallback without a log dir)."""
    folder = tmp_path / "ckpts"
    overlay = tmp_path / "checkpoints.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"dirpath": str(folder), "save_last": True},
                        }
                    ]
                }
            }
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    args = ("--config", str(overlay), "--trainer.logger", "false", *fit_for(1)[3:])
    result = run("fit", "--config", TINY, *args, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "last.ckpt").is_file() and list(work.iterdir()) == []
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["trainer"]["logger"] is False and saved["trainer"]["max_steps"] == 1

    plain = tmp_path / "plain"  # the tiny config's checkpoint callback has no folder of its own
    plain.mkdir()
    result = run("fit", "--config", TINY, *args[2:], cwd=plain)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in plain.iterdir()) == ["checkpoints"]
    assert {p.name for p in (plain / "checkpoints").iterdir()} == {"config.yaml", "last.ckpt"}


def test_missing_weights_exit_with_one_paragraph(tmp_path, run):
    result = run("fit", "--config", TINY, "--model.svd", str(tmp_path / "no_svd"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stderr and "hf download" in result.stderr


REAL_CONFIGS = {
    "ssv2": ["ssv2.yaml"],
    "ssv2_256": ["ssv2.yaml", "ssv2_256.yaml"],
    "clevrer": ["clevrer.yaml"],
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_real_configs_build_the_model(name, tiny_svd_folder):
    """The real configs (read by the CLI's own parser, overlays included) are valid and their model
    sections build; SVD comes from a tiny folder in the hub layout (the real weights cannot be
    downloaded here)."""
    config = read_config([REPO_ROOT / "configs" / f for f in REAL_CONFIGS[name]])
    assert config["trainer"]["logger"]["init_args"]["name"] == name  # each model has its own run folder
    clip = config["data"]["init_args"]["clip"]  # the configs name what differs from the paper's clip
    assert (clip["height"], clip["width"]) == {
        "ssv2": (256, 384),
        "ssv2_256": (256, 256),
        "clevrer": (256, 384),
    }[name]
    assert config["model"]["svd"] == "stabilityai/stable-video-diffusion-img2vid"
    strategy = config["trainer"]["strategy"]  # DDP with gradients as bucket views (no second copy)
    assert config["trainer"]["precision"] == "bf16-mixed" and strategy["class_path"].endswith(".DDPStrategy")
    assert strategy["init_args"]["gradient_as_bucket_view"] is True
    assert (clip["num_frames"], clip["fps"], clip["window"]) == (14, 7.0, "center")
    args = {
        **config["model"],
        "svd": str(tiny_svd_folder),
        "conditioning_embedding_out_channels": [8, 16, 16, 32],
    }
    module = InterDynModule(**args)
    assert module.hparams.learning_rate == 1e-5 and module.sampling.motion_bucket_id == 40


def flat_keys(config: dict, prefix: str = "") -> dict[str, object]:
    """A config as ``{"a.b.c": value}``; lists (the callbacks) stay whole values."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# What configs/ssv2_24gb.yaml changes in configs/ssv2.yaml (before it was an overlay it restated the rest)
SWITCHES_24GB = {
    "trainer.devices": 1,
    "trainer.strategy": "auto",
    "trainer.accumulate_grad_batches": 2,
    "trainer.val_check_interval": 4000,
    "trainer.logger.init_args.name": "ssv2_24gb",
    "model.optimizer": "adam_offload",
    "model.memory.fine_checkpointing": True,
    "model.memory.offload_encoders": True,
    "data.init_args.eval_batch_size": 2,
    "data.init_args.cached_conditioning": True,
}


def test_24gb_overlay_changes_only_its_switches(run, tmp_path):
    """`interdyn fit --config configs/ssv2.yaml --config configs/ssv2_24gb.yaml --print_config` is the
    paper's recipe with the 24 GB switches and nothing else changed: one GPU, Adam's moments in host
    memory, 2 accumulated micro-batches of 4 (the paper's 8 samples per step), cached conditioning with the
    encoders off the GPU, whole-layer checkpointing on top of ssv2.yaml's bf16 UNet and checkpointing."""
    configs = [REPO_ROOT / "configs" / f for f in ("ssv2.yaml", "ssv2_24gb.yaml")]
    result = run("fit", *(a for c in configs for a in ("--config", str(c))), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = flat_keys(yaml.safe_load(result.stdout))
    base = flat_keys(read_config(configs[:1]))
    changed = {k: printed.get(k) for k in base.keys() | printed.keys() if printed.get(k) != base.get(k)}
    # ssv2.yaml's DDP strategy arguments go with its strategy
    changed = {k: v for k, v in changed.items() if not k.startswith("trainer.strategy.")}
    assert changed == SWITCHES_24GB
    memory = yaml.safe_load(result.stdout)["model"]["memory"]
    assert memory["frozen_dtype"] == "bfloat16" and memory["gradient_checkpointing"]
    assert memory["unet_gradient_checkpointing"] and printed["trainer.precision"] == "bf16-mixed"
    assert printed["data.init_args.batch_size"] == 4 and printed["model.learning_rate"] == 1e-5


def test_demo_config_on_fresh_shards(tmp_path, run):
    """`interdyn fit --config configs/tiny_shards.yaml` with fast_dev_run on shards generated right here."""
    from data_prep.synthetic import World, write_split

    world = World(height=64, width=64)
    for split, count in (("train", 4), ("validation", 2)):
        write_split(
            tmp_path / "shards", split, count, seed=0, world=world, num_frames=28, fps=14.0, progress=False
        )
    result = run(
        "fit",
        "--config",
        str(REPO_ROOT / "configs" / "tiny_shards.yaml"),
        "--trainer.fast_dev_run",
        "true",
        "--data.init_args.train_shards",
        str(tmp_path / "shards/train/*.tar"),
        "--data.init_args.val_shards",
        str(tmp_path / "shards/validation/*.tar"),
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.batch_size",
        "2",
        # the config's 14 frames sample the logged videos for half a minute; the flat spelling of the clip
        # settings (before they became the `clip` group) still works on the command line
        "--data.init_args.num_frames",
        "4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ssv2_config_validates_and_prints(tmp_path, run):
    result = run("fit", "--config", str(REPO_ROOT / "configs" / "ssv2.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    assert config["data"]["class_path"] == "interdyn.data.ShardDataModule"
    clip = config["data"]["init_args"]["clip"]  # the nested group, all its fields shown
    assert clip == {
        "num_frames": 14, "fps": 7.0, "frame_stride": None, "frame_sampling": "uniform",
        "height": 256, "width": 384, "crop": "mask_aware", "window": "center",
    }  # fmt: skip
    assert config["trainer"]["devices"] == 2


def test_model_settings_follow_the_data(tmp_path, run):
    """The branch's control channels follow the data's control type, SVD's fps id its clip rate (fps - 1);
    setting either on the model is refused, so the two can never disagree."""
    from interdyn.commands.cli import InterDynCLI

    demo, oracle = (
        REPO_ROOT / "configs" / "tiny_shards.yaml",
        REPO_ROOT / "configs" / "ablations" / "control_oracle.yaml",
    )
    args = ["--config", str(demo), "--config", str(oracle), "--data.init_args.clip.fps", "12.5"]
    cli = InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args)
    assert (cli.model.hparams.conditioning_channels, cli.model.sampling.fps_id) == (2, 11.5)  # from data.clip
    assert cli.model.controlnet.controlnet_cond_embedding.conv_in.in_channels == 2
    refused = run(
        "fit", "--config", str(demo), "--model.sampling.fps_id", "3", "--print_config", cwd=tmp_path
    )
    assert (
        refused.returncode == 2
        and 'Linked "model.sampling.fps_id" must be given via "data"' in refused.stderr
    )


def test_reading_a_config_from_a_tool_with_its_own_arguments_is_quiet(monkeypatch, recwarn):
    """Tools that read a config (``make latents``) have command-line arguments of their own, which the
    config's parser neither reads nor warns about; the process keeps them."""
    argv = ["latents", "--config", TINY, "--out", "elsewhere"]
    monkeypatch.setattr(sys, "argv", list(argv))
    config = read_config([TINY], ["--model.learning_rate", "0.5"])
    assert config["model"]["learning_rate"] == 0.5
    assert sys.argv == argv
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
