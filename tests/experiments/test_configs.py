"""The world's experiment configs (experiments/world/configs, the lab notebook of
experiments/world/README.md) still parse on the configs they overlay, each writes to its own run and
checkpoint folders, and the product imports nothing from experiments/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments" / "world" / "configs"
# the experiment configs that overlay configs/demo.yaml (InterDyn's branch on the world's SVD)
BRANCH_OVERLAYS = (
    "branch_ema.yaml",
    "branch_fit16.yaml",
    "branch_lowlr.yaml",
    "branch_motion.yaml",
    "gpu_branch_quick.yaml",
    "push_branch.yaml",
)
# the one that overlays the world's base stage (configs/world/base.yaml)
BASE_OVERLAYS = ("push_base.yaml",)


def setting(cli, name: str):
    """A model setting of a parsed config by name, whether given flat or inside its settings group."""
    stack = [cli.config.model.as_dict()]
    while stack:
        group = stack.pop()
        if name in group:
            return group[name]
        stack += [v for v in group.values() if isinstance(v, dict)]
    raise KeyError(name)


def test_every_experiment_config_is_tested() -> None:
    assert {p.name for p in EXPERIMENTS.glob("*.yaml")} == {*BRANCH_OVERLAYS, *BASE_OVERLAYS}


def test_the_branch_experiments_compose_on_the_demo_config(synthetic_shards: Path) -> None:
    """Each branch experiment parses on configs/demo.yaml from the shipped branch, with the settings its
    README section names, and keeps run and checkpoint folders of its own (none of them the shipped
    recipe's, `make world-branch`)."""
    import lightning as L

    from interdyn.commands.cli import InterDynCLI
    from interdyn.training.module import InterDynModule

    def parse(config: Path, *extra: str) -> InterDynCLI:
        args = [
            "--config", str(REPO_ROOT / "configs/demo.yaml"), "--config", str(config),
            "--model.svd", str(REPO_ROOT / "weights/world/svd"),
            "--model.controlnet", str(REPO_ROOT / "weights/world/branch"),
            "--data.init_args.train_shards", str(synthetic_shards / "train/*.tar"),
            "--data.init_args.num_workers", "0",
            *extra,
        ]  # fmt: skip
        return InterDynCLI(
            InterDynModule, L.LightningDataModule, subclass_mode_data=True, run=False, args=args
        )

    shipped = parse(REPO_ROOT / "configs/world/branch_anneal.yaml")  # the shipped branch's second phase
    runs = {name: parse(EXPERIMENTS / name) for name in BRANCH_OVERLAYS if name != "gpu_branch_quick.yaml"}
    # the GPU node's quick check (device_world.sh): bounded by time, not steps
    runs["gpu_branch_quick.yaml"] = parse(
        EXPERIMENTS / "gpu_branch_quick.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
    )
    quick = runs["gpu_branch_quick.yaml"]
    assert quick.trainer.max_steps == -1 and quick.config.trainer.max_time == "00:00:04:00"
    assert quick.config.data.init_args.batch_size == 32
    # the push-world experiment's branch: its own data
    push = runs["push_branch.yaml"]
    assert "world_push" in str(push.config.data.init_args.test_shards)
    assert push.model.hparams.learning_rate == shipped.model.hparams.learning_rate
    # the fitting experiment: mostly high noise (SVD's training noise is log sigma ~ N(0.7, 1.6^2))
    assert setting(runs["branch_fit16.yaml"], "p_mean") > 0.7
    # the moving-average experiment: on cached conditioning, with an average of the weights
    ema = runs["branch_ema.yaml"]
    assert ema.model.hparams.ema_decay > 0 and ema.model.branch_ema is not None
    assert ema.config.data.init_args.cached_conditioning
    # the lower-learning-rate experiment: a third phase below the second's rate, on cached conditioning
    lowlr = runs["branch_lowlr.yaml"]
    assert lowlr.model.hparams.learning_rate < shipped.model.hparams.learning_rate
    assert lowlr.config.data.init_args.cached_conditioning and lowlr.model.branch_ema is None
    # the motion-weighted loss
    assert setting(runs["branch_motion.yaml"], "motion_loss_weight") == 9.0

    folders = {
        name: {c.dirpath for c in cli.trainer.callbacks if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)}
        for name, cli in {**runs, "shipped": shipped}.items()
    }
    assert all(len(f) == 1 for f in folders.values())
    assert len(set.union(*folders.values())) == len(folders)
    assert len({cli.trainer.logger.name for cli in (*runs.values(), shipped)}) == len(runs) + 1


def test_the_push_world_fine_tunes_the_shipped_svd() -> None:
    """push_base.yaml overlays the world's base stage: the shipped SVD's UNet fine-tuned on the world of
    pushes, written to its own folder (not weights/world)."""
    from interdyn.commands.config import read_config

    config = read_config([REPO_ROOT / "configs/world/base.yaml", EXPERIMENTS / "push_base.yaml"], world=True)
    model = config["model"]["init_args"]
    assert model["init_from"] == "weights/world/svd" and model["vae"] == "weights/world/svd/vae"
    assert model["out"].startswith("runs/")
    assert "world_push" in config["data"]["init_args"]["train_shards"]
    overlay = yaml.safe_load((EXPERIMENTS / "push_base.yaml").read_text())
    assert overlay["trainer"]["max_steps"] == 600


@pytest.mark.parametrize("where", ["interdyn", "data_prep", "benchmarks"])
def test_the_product_imports_nothing_from_experiments(where: str) -> None:
    offending = []
    for path in sorted((REPO_ROOT / where).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offending += [
                f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] == "experiments"
            ]
    assert not offending
