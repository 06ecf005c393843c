"""Helpers run inside real DDP processes by tests/commands/test_ddp.py: a callback that records what each rank saw,
and ``python -m tests.commands.ddp_probe --config ...``, which fits and then tests in one launch (both ranks run
it; Lightning's launcher starts the second rank with the same command)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class RankProbe(pl.Callback):
    """Writes ``<out>/rank<r>.json``: the training, validation and test keys this rank received, a hash of
    the branch weights at the start and at the end of training, and of their moving average when the model
    keeps one, and the ``val/loss`` this rank's callbacks saw after its last validation (rewritten after fit
    and after test)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []
        self.test_keys: list[str] = []
        self.start_hash = self.end_hash = self.ema_hash = ""
        self.global_step = 0
        self.val_loss: float | None = None

    @staticmethod
    def _hash(module: Any) -> str:
        digest = hashlib.sha256()
        for name, value in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_hash = self._hash(pl_module.controlnet)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.train_keys.extend(batch["key"])

    # ``indices``: the batch's index, and the dataloader's when there are several.
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *indices: int
    ) -> None:
        if not trainer.sanity_checking:
            self.val_keys.extend(batch.get("key", []))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            value = trainer.callback_metrics.get("val/loss")
            self.val_loss = None if value is None else float(value)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *indices: int
    ) -> None:
        self.test_keys.extend(batch.get("key", []))

    def _write(self, trainer: pl.Trainer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_keys": self.train_keys,
            "val_keys": self.val_keys,
            "test_keys": self.test_keys,
            "start_hash": self.start_hash,
            "end_hash": self.end_hash,
            "ema_hash": self.ema_hash,
            "global_step": self.global_step,
            "val_loss": self.val_loss,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end_hash, self.global_step = self._hash(pl_module.controlnet), trainer.global_step
        if getattr(pl_module, "branch_ema", None) is not None:
            self.ema_hash = self._hash(pl_module.branch_ema)
        self._write(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)


def ranks_trained_in_sync(probe: Path, steps: int) -> list[dict[str, Any]]:
    """The two ranks' records under ``probe``, checked for what every 2-process run must show: both ran
    ``steps`` steps in a world of 2, drew their own training clips, started from the same branch and ended
    with the same, changed weights."""
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [steps, steps]
    assert ranks[0]["train_keys"] != ranks[1]["train_keys"]
    assert ranks[0]["start_hash"] == ranks[1]["start_hash"]
    assert ranks[0]["end_hash"] == ranks[1]["end_hash"] != ranks[0]["start_hash"]
    return ranks


def main(argv: list[str] | None = None) -> None:
    """Build the CLI from ``argv`` without running a subcommand, then fit and test the same trainer."""
    import lightning as L

    from interdyn.commands.cli import InterDynCLI
    from interdyn.training.module import InterDynModule

    cli = InterDynCLI(
        InterDynModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        run=False,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    main()
