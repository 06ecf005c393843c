"""No lost work: shipped configs checkpoint periodically, Ctrl-C during fit leaves a resumable
last.ckpt, and ``--ckpt_path last`` without a checkpoint is an error rather than a fresh start."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.helpers import REPO_ROOT, run_cli

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
FAST = [
    "--data.init_args.num_frames",
    "2",
    "--data.init_args.num_train",
    "8",
    "--data.init_args.num_val",
    "1",
]


class SigintAtStep3(L.Callback):
    """Sends this process a real SIGINT (what Ctrl-C does) after the third training step."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)


def fit_tiny(*extra: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``interdyn fit`` of configs/tiny.yaml, shortened, with ``extra`` arguments."""
    return run_cli("fit", "--config", TINY, *FAST, *extra, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_checkpoint_periodically(name):
    config = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())
    # an overlay of ssv2.yaml (it names no data class; given after ssv2.yaml): its trainer settings on top
    if "class_path" not in (config.get("data") or {}):
        base = yaml.safe_load((REPO_ROOT / "configs" / "ssv2.yaml").read_text())
        base["trainer"] = {
            **base["trainer"],
            **{k: v for k, v in (config.get("trainer") or {}).items() if k != "logger"},
        }
        config = base
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    checkpoints = [c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints, f"{name} trains without a ModelCheckpoint"
    for args in checkpoints:
        assert args.get("save_last"), f"{name}: no last checkpoint to resume from"
        every = args.get("every_n_train_steps")
        max_steps = config["trainer"].get("max_steps", -1)
        assert every and every > 0 and (max_steps < 0 or every < max_steps), f"{name}: no periodic checkpoint"
        # full-size checkpoints are ~8 GB each: keeping every one of a long run fills the disk
        assert args.get("save_top_k", 1) != -1, f"{name}: keeps every checkpoint (unbounded)"


def test_ctrl_c_during_fit_leaves_a_resumable_last_checkpoint(tmp_path, monkeypatch, capsys):
    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give this test the one a terminal's Ctrl-C meets (restored afterwards).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_fit(tmp_path, monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_during_fit(tmp_path, monkeypatch, capsys) -> None:
    sigint = "--trainer.callbacks+=tests.training.test_checkpoint_policy.SigintAtStep3"
    code, err = fit_tiny(sigint, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code != 0, "an interrupted run must not exit 0"
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file(), err[-2000:]
    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3 and checkpoint["optimizer_states"]


def test_resuming_last_without_a_checkpoint_is_an_error(tmp_path, monkeypatch, capsys):
    code, err = fit_tiny("--ckpt_path", "last", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2, err[-2000:]
    assert "no last checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists(), "it must not train"
