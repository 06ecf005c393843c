"""``--ckpt_path last`` resumes every shipped training config.

A ``ModelCheckpoint`` without a ``dirpath`` (configs/ssv2.yaml, clevrer.yaml, ...) writes into the
logger's numbered run folder, which is new for every run; ``last`` must find the newest last checkpoint
of the earlier runs (interdyn.training.resume). Each distinct checkpoint setup of the shipped configs (logger and
``ModelCheckpoint`` settings, read through the CLI's own parser with overlays applied) is run on the tiny
model: a fit, then two resumes with ``--ckpt_path last``, each of which must start where the newest
checkpoint left off.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from interdyn.commands.config import read_config
from tests.helpers import REPO_ROOT, run_interdyn

CONFIGS = REPO_ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
# 6 batches an epoch: no step of these runs ends an epoch, where Lightning defers a checkpoint that monitors
# a value (configs/ssv2.yaml's `monitor: step`) to a validation these short runs never reach
FAST = ["--data.init_args.num_frames", "2", "--data.init_args.num_train", "12", "--data.init_args.num_val", "1"]  # fmt: skip

# Every config file and the files it is given after (its base); None: read with `interdyn world fit`'s
# parser. A config added under configs/ or experiments/world/configs/ must be listed here (the first test
# says so).
WORLD = "world"
EXPERIMENTS = "../experiments/world/configs"
BASES: dict[str, tuple[list[str], str | None]] = {
    "tiny.yaml": ([], None),
    "tiny_shards.yaml": ([], None),
    "demo.yaml": ([], None),
    "ssv2.yaml": ([], None),
    "ssv2_24gb.yaml": (["ssv2.yaml"], None),
    "clevrer.yaml": ([], None),
    "ssv2_256.yaml": (["ssv2.yaml"], None),
    "svd_xt.yaml": (["ssv2.yaml"], None),
    # the Wan backbone's configs name their module (model.class_path): read with the subclass parser
    "wan_tiny.yaml": ([], WORLD),
    "wan_ssv2.yaml": ([], WORLD),
    "wan_48gb.yaml": (["wan_ssv2.yaml"], WORLD),
    **{f"ablations/{p.name}": (["ssv2.yaml"], None) for p in sorted((CONFIGS / "ablations").glob("*.yaml"))},
    **{f"experiments/{p.name}": (["clevrer.yaml"], None) for p in sorted((CONFIGS / "experiments").glob("*.yaml"))},
    "world/vae.yaml": ([], WORLD),
    "world/base.yaml": ([], WORLD),
    "world/gpu/base.yaml": (["world/base.yaml"], WORLD),
    "world/gpu/vae.yaml": (["world/vae.yaml"], WORLD),
    **{f"world/{name}": (["demo.yaml"], None) for name in ("branch.yaml", "branch_anneal.yaml", "gpu/branch.yaml", "context.yaml")},
    # the world's experiments (experiments/world/configs, named relative to configs/)
    f"{EXPERIMENTS}/push_base.yaml": (["world/base.yaml"], WORLD),
    **{
        f"{EXPERIMENTS}/{name}": (["demo.yaml"], None)
        for name in (
            "branch_ema.yaml", "branch_fit16.yaml", "branch_lowlr.yaml", "branch_motion.yaml", "push_branch.yaml",
            "gpu_branch_quick.yaml",
        )
    },
}  # fmt: skip


def checkpoint_setup(name: str) -> dict[str, Any]:
    """The logger and ModelCheckpoint settings ``name`` trains with (overlays applied)."""
    bases, mode = BASES[name]
    config = read_config([CONFIGS / f for f in (*bases, name)], world=mode == WORLD)
    trainer = config["trainer"]
    checkpoints = [c for c in trainer.get("callbacks") or [] if c["class_path"].endswith(".ModelCheckpoint")]
    return {"logger": trainer.get("logger"), "checkpoints": checkpoints}


def signature(setup: dict[str, Any]) -> str:
    """What decides where checkpoints go and which one `last` finds: the settings without the run's name
    and step interval (a fixed folder counts as fixed, whatever it is called)."""
    logger = setup["logger"] or {}
    kinds = []
    for callback in setup["checkpoints"]:
        args = {k: v for k, v in callback["init_args"].items() if k != "every_n_train_steps"}
        args["dirpath"] = args.get("dirpath") is not None
        kinds.append(args)
    return json.dumps([logger.get("class_path"), kinds], sort_keys=True)


def training_setups() -> dict[str, str]:
    """One config per distinct checkpoint setup of the configs that train (have a ModelCheckpoint)."""
    chosen: dict[str, str] = {}
    for name in BASES:
        setup = checkpoint_setup(name)
        if setup["checkpoints"]:
            chosen.setdefault(signature(setup), name)
    return chosen


class StartProbe(L.Callback):
    """Appends the step each fit starts from to ``starts.json`` in the working directory."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path("starts.json")
        starts = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*starts, trainer.global_step]))


def run_cli(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    done = run_interdyn(*args, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)
    return done.returncode, done.stderr


def test_every_config_is_classified():
    shipped = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    shipped |= {f"{EXPERIMENTS}/{p.name}" for p in (CONFIGS / EXPERIMENTS).glob("*.yaml")}
    assert shipped == set(BASES), "list the new config and the configs it overlays in BASES"


# One config of each checkpoint setup the shipped configs train with (the next test checks that these are
# all of them): ssv2's (no fixed folder, `last` a link, the 3 newest step checkpoints; the README's
# `--ckpt_path last`), tiny's (no fixed folder, `last` a copy), a fixed folder, and two callbacks in one.
SETUPS = [
    "ssv2.yaml",
    pytest.param("tiny.yaml", marks=pytest.mark.slow),
    pytest.param("tiny_shards.yaml", marks=pytest.mark.slow),
    pytest.param(f"{EXPERIMENTS}/branch_ema.yaml", marks=pytest.mark.slow),
]


def test_the_setups_run_below_are_those_of_the_shipped_configs():
    """Every training config's setup is among those run below; the configs the issue names have no fixed
    checkpoint folder."""
    names = [s if isinstance(s, str) else s.values[0] for s in SETUPS]
    assert {signature(checkpoint_setup(n)) for n in names} == set(training_setups())
    for name in ("ssv2.yaml", "clevrer.yaml", "ssv2_24gb.yaml"):
        assert signature(checkpoint_setup(name)) == signature(checkpoint_setup("ssv2.yaml"))
        assert all(not c["init_args"].get("dirpath") for c in checkpoint_setup(name)["checkpoints"])


@pytest.mark.parametrize("name", SETUPS)
def test_fit_resumes_with_ckpt_path_last(name, tmp_path, monkeypatch, capsys):
    """`interdyn fit ... --ckpt_path last` twice after a first fit, with ``name``'s logger and checkpoint
    settings (its most frequent checkpoint every step): each run starts at the step the previous one stopped."""
    setup = checkpoint_setup(name)
    callbacks = copy.deepcopy(setup["checkpoints"])
    shortest = min(c["init_args"]["every_n_train_steps"] for c in callbacks)
    for callback in callbacks:  # the most frequent every step; the others keep theirs (distinct state keys)
        if callback["init_args"]["every_n_train_steps"] == shortest:
            callback["init_args"]["every_n_train_steps"] = 1
    override = {"trainer": {"logger": setup["logger"], "callbacks": callbacks, "enable_progress_bar": False}}
    (tmp_path / "setup.yaml").write_text(yaml.safe_dump(override))
    base = ["fit", "--config", TINY, "--config", str(tmp_path / "setup.yaml"), *FAST]
    probe = "--trainer.callbacks+=tests.training.test_resume.StartProbe"
    for steps, resume in ((1, []), (2, ["--ckpt_path", "last"]), (3, ["--ckpt_path", "last"])):
        code, err = run_cli(
            *base,
            probe,
            "--trainer.max_steps",
            str(steps),
            *resume,
            cwd=tmp_path,
            monkeypatch=monkeypatch,
            capsys=capsys,
        )
        assert code == 0, err[-3000:]
        time.sleep(0.05)  # distinct modification times, as runs minutes apart have
    assert json.loads((tmp_path / "starts.json").read_text()) == [0, 1, 2]


def test_last_ignores_a_dangling_link_and_names_the_folders_searched(tmp_path, monkeypatch, capsys):
    """A `last.ckpt` link whose checkpoint was deleted is not resumed from; with nothing else there, the
    error names where it looked (one sentence, exit 2)."""
    folder = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    os.symlink("epoch=0-step=9.ckpt", folder / "last.ckpt")  # the target does not exist
    code, err = run_cli(
        "fit",
        "--config",
        TINY,
        *FAST,
        "--ckpt_path",
        "last",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "Traceback" not in err
    assert "no last checkpoint" in err and os.path.join("runs", "tiny", "*", "checkpoints") in err


def test_last_without_a_checkpoint_callback_is_one_sentence(tmp_path, monkeypatch, capsys):
    """A run that keeps no checkpoints has no last one: `--ckpt_path last` says to pass a file."""
    code, err = run_cli(
        "test", "--config", TINY, *FAST, "--trainer.callbacks=[]", "--trainer.enable_checkpointing", "false",
        "--ckpt_path", "last", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "no ModelCheckpoint" in err and "pass the path of a .ckpt file" in err
