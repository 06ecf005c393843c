"""A resumed run's progress bar counts to the end of the run (Lightning's alone shows e.g. ``6/1``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from tests.helpers import REPO_ROOT, run_cli

SEEN: list[tuple[float, float]] = []


class RecordBar(L.Callback):
    """Records what the training bar shows when training ends: ``(count, total)``, rich or tqdm."""

    def on_train_end(self, trainer, pl_module) -> None:
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            task = bar.progress.tasks[bar.train_progress_bar_id]
            SEEN.append((task.completed, task.total))
        else:
            assert isinstance(bar, TQDMProgressBar)
            SEEN.append((bar.train_progress_bar.n, bar.train_progress_bar.total))


def test_a_resumed_run_counts_to_its_total(
    synthetic_shards: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    overlay = tmp_path / "overlay.yaml"
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(tmp_path / "ckpt"),
            "save_last": True,
            "save_top_k": 0,
            "every_n_train_steps": 2,
        },
    }
    overlay.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "limit_val_batches": 0,
                    "enable_progress_bar": True,
                    "callbacks": [checkpoint, {"class_path": "tests.callbacks.test_progress.RecordBar"}],
                },
                "data": {
                    "init_args": {
                        "train_shards": str(synthetic_shards / "train/*.tar"),
                        "val_shards": str(synthetic_shards / "validation/*.tar"),
                        "clip": {"num_frames": 2, "height": 64, "width": 64},
                        "num_workers": 0,
                        "batch_size": 2,
                    }
                },
            }
        )
    )
    args = ["fit", "--config", str(REPO_ROOT / "configs" / "tiny_shards.yaml"), "--config", str(overlay)]
    SEEN.clear()
    code, err = run_cli(
        *args, "--trainer.max_steps", "4", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0, err[-2000:]
    assert SEEN == [(4, 4)]  # a fresh run

    SEEN.clear()
    code, err = run_cli(
        *args,
        "--trainer.max_steps",
        "6",
        "--ckpt_path",
        "last",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, err[-2000:]
    # resumed at step 4 of the shards' single epoch, it ends at 6 of 6 (Lightning's own bar ends at 6 of
    # 1: the steps left after the first resumed batch)
    assert SEEN == [(6, 6)]
