"""Real DDP: two CPU processes on gloo, launched by Lightning, with the shipped GPU configs' own recipe
(bf16-mixed, bf16 frozen parts, gradient checkpointing, clipping with fused Adam, checkpointing and the
callbacks), so a config change cannot break the GPU path silently; and evaluation across ranks, which
must give the one-process tables."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from interdyn.commands.cli import main
from interdyn.commands.config import read_config
from interdyn.training.checkpoint import EMA_KEY
from tests.commands.ddp_probe import ranks_trained_in_sync
from tests.helpers import REPO_ROOT, TINY_CONTROL_CHANNELS

DEMO = yaml.safe_load((REPO_ROOT / "configs" / "tiny_shards.yaml").read_text())


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def tiny_model(model: dict) -> dict:
    """The config's model settings on the tiny random SVD, sampling in one step, Adam fused as on CUDA."""
    return {
        **model,
        "svd": DEMO["model"]["svd"],
        "conditioning_embedding_out_channels": list(TINY_CONTROL_CHANNELS),
        "sampling": {**model.get("sampling", {}), "num_inference_steps": 1},
        "memory": {**model.get("memory", {}), "fused_optimizer": True},
    }


def first_test_shard(shards: Path) -> Path:
    return next((shards / "test").glob("*.tar"))


def broken_shard(folder: Path, source: Path) -> Path:
    """A shard holding one copy of ``source``'s first sample whose video is truncated (skipped as bad_video)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "broken-000000.tar"
    with tarfile.open(source) as src, tarfile.open(out, "w") as dst:
        first = src.getmembers()[0].name.split(".", 1)[0]
        for member in src.getmembers():
            key, ext = member.name.split(".", 1)
            if key != first:
                continue
            data = src.extractfile(member).read()
            if ext.endswith("mp4"):
                data = data[:200]
            info = tarfile.TarInfo(f"synthetic-broken.{ext}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def one_clip_shard(folder: Path) -> Path:
    """A validation split of a single clip: with two ranks, one of them gets no validation batch."""
    from data_prep.synthetic import World, write_split

    world = World(height=64, width=96)
    write_split(folder, "validation", 1, seed=5, world=world, num_frames=30, fps=14.0, progress=False)
    return folder / "validation"


CONFIGS = [
    "ssv2",
    pytest.param("ssv2_256", marks=pytest.mark.slow),
    pytest.param("clevrer", marks=pytest.mark.slow),
]
# the config files of each run, overlays after their base
CONFIG_FILES = {
    "ssv2": ["ssv2.yaml"],
    "ssv2_256": ["ssv2.yaml", "ssv2_256.yaml"],
    "clevrer": ["clevrer.yaml"],
}


@pytest.mark.parametrize("name", CONFIGS)
def test_gpu_config_fits_validates_and_tests_on_two_processes(name, tmp_path, synthetic_shards):
    """One 2-process launch with the config's trainer, model recipe and callbacks: fit 2 steps, validate
    on a single clip (sanity check included: one rank has no batch and must neither hang nor fail), then
    test with the counterfactual groups split across the ranks and one broken sample. Then `interdyn test`
    of the checkpoint on one process writes the same tables."""
    config = read_config([REPO_ROOT / "configs" / f for f in CONFIG_FILES[name]])
    probe = tmp_path / "probe"
    trainer = config["trainer"]
    trainer.update(
        accelerator="cpu",
        max_steps=2,
        val_check_interval=2,
        enable_progress_bar=False,
        logger={
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(tmp_path / "runs"), "name": name},
        },
    )
    assert trainer["strategy"]["class_path"].endswith(".DDPStrategy") and trainer["devices"] == 2
    assert (
        trainer["strategy"]["init_args"]["gradient_as_bucket_view"] and trainer["precision"] == "bf16-mixed"
    )
    assert trainer["gradient_clip_val"] > 0
    for callback in trainer["callbacks"]:
        args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("ModelCheckpoint"):
            args.update(every_n_train_steps=1)  # the config's policy, at this run's scale
        if callback["class_path"].endswith("SampleVideoLogger"):
            args.update(num_videos=1, num_inference_steps=1)
        if callback["class_path"].endswith("VideoEvaluation"):
            # LPIPS needs backbone weights this machine cannot fetch; FVD/KVD run I3D, slow on CPU (their
            # merge across ranks: tests/metrics/test_suite.py)
            args.update(
                metrics=[m for m in args["metrics"] if m not in ("lpips", "fvd", "kvd")],
                num_inference_steps=1,
                save_videos=1,
            )
    trainer["callbacks"].append(
        {
            "class_path": "interdyn.callbacks.CounterfactualEvaluation",
            "init_args": {"num_inference_steps": 1, "max_side": 32},
        }
    )
    # with a moving average of the branch: each rank keeps its own, the test below samples it on two ranks
    # and on one from the checkpoint, and the tables must agree
    config["model"] = {**tiny_model(config["model"]), "ema_decay": 0.9}
    config["data"]["init_args"].update(
        train_shards=str(synthetic_shards / "train" / "*.tar"),
        val_shards=str(one_clip_shard(tmp_path / "one") / "*.tar"),
        test_shards=[
            str(synthetic_shards / "test" / "*.tar"),  # 2 groups x 2 variants
            str(broken_shard(tmp_path / "bad", first_test_shard(synthetic_shards))),
        ],
        clip={**config["data"]["init_args"].get("clip", {}), "height": 64, "width": 64},
        batch_size=2,
        eval_batch_size=1,
        num_workers=0,
        persistent_workers=False,
        pin_memory=False,
    )
    single = {
        **config,
        "trainer": {**trainer, "devices": 1, "strategy": "auto", "callbacks": list(trainer["callbacks"])},
    }
    single["trainer"]["logger"] = {
        **trainer["logger"],
        "init_args": {**trainer["logger"]["init_args"], "name": "one"},
    }
    trainer["callbacks"].append(
        {"class_path": "tests.commands.ddp_probe.RankProbe", "init_args": {"out": str(probe)}}
    )
    # a user's checkpoint on the validation loss: the monitored value must exist on every rank
    best = {"dirpath": str(tmp_path / "best"), "filename": "best", "monitor": "val/loss", "save_top_k": 1}
    trainer["callbacks"].append(
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": best}
    )
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(single))
    result = launch("-m", "tests.commands.ddp_probe", "--config", str(tmp_path / "two.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    # each rank drew its own training stream; the weights stayed in sync and did change
    ranks = ranks_trained_in_sync(probe, steps=2)
    assert ranks[0]["ema_hash"] == ranks[1]["ema_hash"] not in ("", ranks[0]["end_hash"])
    # the single validation clip went to one rank; the other validated with no batch and did not stall
    assert sorted(len(r["val_keys"]) for r in ranks) == [0, 1]
    # both ranks see the same val/loss (a ModelCheckpoint monitoring it runs on every rank)
    assert ranks[0]["val_loss"] is not None and ranks[0]["val_loss"] == ranks[1]["val_loss"]
    assert (tmp_path / "best" / "best.ckpt").is_file()
    # every test clip exactly once over the two ranks, each group split across them
    test0, test1 = ranks[0]["test_keys"], ranks[1]["test_keys"]
    assert len(test0) == len(test1) == 2 and len(set(test0 + test1)) == 4
    assert {k.rsplit("_v", 1)[0] for k in test0} == {k.rsplit("_v", 1)[0] for k in test1}
    run = tmp_path / "runs" / name / "version_0"
    assert len(list((run / "samples").glob("*.gif"))) == 1 and len(list((run / "videos").glob("*.mp4"))) == 2
    # each rank kept its rows on disk before the gather
    assert sorted(p.name for p in (run / "eval_parts").iterdir()) == ["rank0.pt", "rank1.pt"]
    # the bounded checkpoint policy: `last` links the newest step checkpoint; branch weights only
    last = run / "checkpoints" / "last.ckpt"
    steps = sorted(p.name for p in (run / "checkpoints").glob("*step=*.ckpt"))
    assert len(steps) == 2 and last.is_symlink() and last.resolve().name == steps[-1]
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["global_step"] == 2 and all(k.startswith("controlnet.") for k in state["state_dict"])
    assert set(state[EMA_KEY]) == {k.removeprefix("controlnet.") for k in state["state_dict"]}

    # the same checkpoint tested on one process, in this one (one thread, like each rank)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["test", "--config", str(tmp_path / "one.yaml"), "--ckpt_path", str(last)])
    finally:
        torch.set_num_threads(threads)
    one = tmp_path / "runs" / "one" / "version_0"
    reports = [json.loads((folder / "metrics.json").read_text()) for folder in (run, one)]
    for report in reports:
        keys = [r["key"] for r in report["per_video"]]
        assert sorted(keys) == sorted(test0 + test1) and "motion_fidelity" in report["metrics"]
        assert report["clips"] == {"scored": 4, "skipped": 1, "skipped_by_reason": {"bad_video": 1}}
    assert reports[0]["per_video"] == reports[1]["per_video"]
    for table in ("metrics.md", "counterfactual.md"):
        assert (run / table).read_text() == (one / table).read_text(), table
    assert "4 clips scored, 1 skipped (bad_video: 1)" in (run / "metrics.md").read_text()
    groups = json.loads((run / "counterfactual.json").read_text())["groups"]
    assert len(groups) == 2 and all(g["members"] == 2 for g in groups.values())


def test_a_test_run_with_no_scored_clip_is_an_error(tmp_path, synthetic_shards, capsys):
    override = {
        "trainer": {
            "logger": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "interdyn.callbacks.VideoEvaluation", "init_args": {"metrics": ["ssim"]}}
            ],
        },
        "data": {
            "init_args": {
                "test_shards": str(broken_shard(tmp_path / "bad", first_test_shard(synthetic_shards)))
            }
        },
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    demo = str(REPO_ROOT / "configs" / "tiny_shards.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "test",
                "--config",
                demo,
                "--config",
                str(tmp_path / "override.yaml"),
                "--data.init_args.num_workers",
                "0",
            ]
        )
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("interdyn: error: no test clip was scored") and "(bad_video: 1)" in message
