"""Every ablation and experiment config parses on top of the demo config and runs one batch on the
built-in dataset with the tiny model: the control ablations one training step, the test experiments
one test batch (one counterfactual group) that writes their table."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from interdyn.commands.cli import InterDynCLI
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.shards import CONTROL_CHANNELS
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT

ABLATIONS = sorted((REPO_ROOT / "configs" / "ablations").glob("control_*.yaml"))
EXPERIMENTS = {
    "mask_noise": REPO_ROOT / "configs" / "ablations" / "mask_noise.yaml",
    "force_propagation": REPO_ROOT / "configs" / "experiments" / "force_propagation.yaml",
    "counterfactual": REPO_ROOT / "configs" / "experiments" / "counterfactual.yaml",
}


def make_cli(config: Path, tmp_path: Path, shards: Path, *extra: str) -> InterDynCLI:
    args = [
        "--config", str(REPO_ROOT / "configs" / "tiny_shards.yaml"), "--config", str(config),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--model.sampling.num_inference_steps", "1",
        "--data.init_args.train_shards", str(shards / "train" / "*.tar"),
        "--data.init_args.val_shards", str(shards / "validation" / "*.tar"),
        "--data.init_args.test_shards", str(shards / "test" / "*.tar"),
        "--data.init_args.clip.num_frames", "6",  # one field of the clip: the rest stays the configs'
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
        "--data.init_args.persistent_workers", "false",
        *extra,
    ]  # fmt: skip
    return InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args)


def test_every_config_is_covered():
    names = {p.name for p in (REPO_ROOT / "configs" / "ablations").glob("*.yaml")}
    names |= {p.name for p in (REPO_ROOT / "configs" / "experiments").glob("*.yaml")}
    assert names == {p.name for p in ABLATIONS} | {p.name for p in EXPERIMENTS.values()}


@pytest.mark.parametrize("config", ABLATIONS, ids=lambda p: p.stem)
def test_control_ablation_trains_one_step(config, tmp_path, synthetic_shards, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's checkpoint folder is relative
    cli = make_cli(
        config, tmp_path, synthetic_shards, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"
    )
    control_type = cli.datamodule.hparams.control_type
    assert control_type == config.stem.removeprefix("control_")
    channels = CONTROL_CHANNELS[control_type]
    assert cli.model.controlnet.controlnet_cond_embedding.conv_in.in_channels == channels
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert Path(cli.trainer.log_dir).parent.name == config.stem  # each ablation has its own run folder


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_runs_one_test_batch_and_writes_its_table(name, tmp_path, synthetic_shards, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--trainer.limit_test_batches", "1"]
    if name == "mask_noise":  # two levels keep it short; the config's full sweep runs the same code
        extra += ["--trainer.callbacks.init_args.perturbations", '{"dilate": [2], "drop": [0.5]}',
                  "--trainer.callbacks.init_args.metrics", "[ssim, psnr]"]  # fmt: skip
    cli = make_cli(EXPERIMENTS[name], tmp_path, synthetic_shards, *extra)
    # In a process that has imported gradio (the app's tests, on the same xdist worker), LightningCLI parses
    # `--trainer.limit_test_batches 1` as 1.0, i.e. every batch; one batch is what this test means.
    cli.trainer.limit_test_batches = 1
    # the configs' clip settings overlay field by field: tiny_shards' size, the experiment's window, the
    # command line's frame count, the paper's for the rest
    window = "start" if name == "counterfactual" else None
    assert cli.datamodule.clip == PAPER_CLIP.with_overrides(num_frames=6, height=64, width=64, window=window)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    run = Path(cli.trainer.log_dir)
    assert run.parent.name == name
    table = json.loads((run / f"{name}.json").read_text())
    assert (run / f"{name}.md").read_text().strip()
    if name == "mask_noise":
        assert [r["label"] for r in table["levels"]] == ["clean", "dilate=2", "drop=0.5"]
    elif name == "force_propagation":
        assert table["counts"]["clips"] == 2
    else:
        assert [g["members"] for g in table["groups"].values()] == [2]
