"""A checkpoint written before the settings groups (flat hyper-parameters such as ``num_inference_steps``,
tests/fixtures/checkpoint_v0, made at commit aa3d4dc) still tests, exports, generates its settings and
resumes with today's code."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from interdyn.training.checkpoint import EMA_KEY, checkpoint_settings, load_branch, read_checkpoint
from interdyn.training.settings import nest_settings
from tests.helpers import REPO_ROOT, run_interdyn

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "checkpoint_v0"


def today_config(tmp_path: Path) -> Path:
    """The fixture's config with its model settings in today's groups (what nest_settings does to a
    config written for the flat names)."""
    config = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    config["model"] = nest_settings(config["model"])
    config["trainer"]["max_steps"] = 4
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_fixture_is_in_the_old_layout():
    raw = torch.load(FIXTURE / "last.ckpt", map_location="cpu", weights_only=True)
    hparams = raw["hyper_parameters"]
    assert hparams["num_inference_steps"] == 2 and "sampling" not in hparams, "flat, as written at aa3d4dc"
    assert raw["global_step"] == 2 and EMA_KEY in raw and raw["optimizer_states"]


def test_reading_nests_the_flat_settings():
    checkpoint = read_checkpoint(FIXTURE / "last.ckpt")
    hparams = checkpoint["hyper_parameters"]
    assert hparams["sampling"]["num_inference_steps"] == 2
    assert hparams["memory"]["frozen_dtype"] == "float32"
    assert hparams["objective"]["val_sigmas"] == [0.1, 0.5, 1.0, 2.0, 5.0, 20.0]
    assert not {"num_inference_steps", "frozen_dtype", "p_mean"} & set(hparams)
    assert checkpoint_settings(checkpoint)["num_inference_steps"] == 2
    branch, settings = load_branch(str(FIXTURE / "last.ckpt"))
    ema = checkpoint[EMA_KEY]
    assert all(torch.equal(branch.state_dict()[k], v) for k, v in ema.items()), "the average, as before"
    assert settings["num_inference_steps"] == 2 and settings["svd"]["seed"] == 0


def test_an_old_checkpoint_tests_exports_and_resumes(tmp_path, monkeypatch, capsys):
    config = today_config(tmp_path)
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(FIXTURE / "last.ckpt", ckpt)
    tested = run_interdyn(
        "test",
        "--config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert "test/loss" in tested.stdout

    exported = run_interdyn(
        "export",
        "--ckpt_path",
        str(ckpt),
        "--out",
        str(tmp_path / "branch"),
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "branch" / "config.json").is_file()

    resumed = run_interdyn(
        "fit",
        "--config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    new = torch.load(last, map_location="cpu", weights_only=True)
    assert new["global_step"] == 4, "two more steps after the old checkpoint's two"
    assert new["hyper_parameters"]["sampling"]["num_inference_steps"] == 2, "its settings carried over"
    old_ema = torch.load(ckpt, map_location="cpu", weights_only=True)[EMA_KEY]
    assert any(not torch.equal(new[EMA_KEY][k], v) for k, v in old_ema.items()), "the average moved on"
