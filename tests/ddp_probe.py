"""A callback used by tests/test_ddp.py inside real DDP processes: it records what each rank saw."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class RankProbe(pl.Callback):
    """Writes ``<out>/rank<r>.json``: the training and validation keys this rank received, and a hash
    of the branch weights at the start and at the end of training."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []
        self.start_hash = ""

    @staticmethod
    def _hash(module: pl.LightningModule) -> str:
        digest = hashlib.sha256()
        for name, value in sorted(module.controlnet.state_dict().items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_hash = self._hash(pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.train_keys.extend(batch["key"])

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.val_keys.extend(batch["key"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_keys": self.train_keys,
            "val_keys": self.val_keys,
            "start_hash": self.start_hash,
            "end_hash": self._hash(pl_module),
            "global_step": trainer.global_step,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
