"""Predictions written to disk as they come: ``interdyn predict`` over a whole test split without holding its
videos in host memory, resumable after a kill.

Each clip's sampled videos become ``<out_dir>/<key>.mp4`` (``<key>_s<j>.mp4`` for ``num_samples > 1``),
each written atomically (a temporary file renamed when complete), so a killed run never leaves a file
that looks whole. The module's ``predict_step`` asks :meth:`VideoPredictionWriter.has_prediction` and does
not sample the clips already written: rerunning the same command finishes the split. The predictions that
``trainer.predict`` returns keep each batch's keys and the paths written, not the videos.

    interdyn predict --config configs/ssv2.yaml --ckpt_path ... \\
        --trainer.callbacks+=interdyn.callbacks.VideoPredictionWriter \\
        --trainer.callbacks.out_dir runs/ssv2_predictions
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from interdyn.data.video import encode_video
from interdyn.utils.files import write_atomic


class VideoPredictionWriter(BasePredictionWriter):
    """Write every predicted clip's videos as mp4 files when its batch ends.

    Args:
        out_dir: the folder of the videos (made if missing).
        fps: the frame rate written into the files (SVD's 7 by default).
        overwrite: sample and write every clip again, even those already written.
    """

    def __init__(self, out_dir: str, fps: float = 7.0, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.fps, self.overwrite = Path(out_dir), fps, overwrite

    def paths(self, key: str, num_samples: int) -> list[Path]:
        """The files of clip ``key``'s ``num_samples`` videos."""
        stem = str(key).replace("/", "_")
        if num_samples == 1:
            return [self.out_dir / f"{stem}.mp4"]
        return [self.out_dir / f"{stem}_s{j}.mp4" for j in range(num_samples)]

    def has_prediction(self, key: str, num_samples: int) -> bool:
        """Whether every video of clip ``key`` is already written (never, with ``overwrite``)."""
        return not self.overwrite and all(p.exists() for p in self.paths(key, num_samples))

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Encode and write the batch's videos, then drop them from ``prediction`` (which
        ``trainer.predict`` may keep until the run ends) and leave the paths in their place."""
        if not prediction or prediction.get("videos") is None:
            return
        videos: torch.Tensor = prediction["videos"]  # (B, N, T, 3, H, W) uint8
        keys = prediction.get("key") or [
            f"rank{trainer.global_rank}-batch{batch_idx}-{i}" for i in range(len(videos))
        ]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for key, clip in zip(keys, videos, strict=True):
            for path, video in zip(self.paths(key, len(clip)), clip, strict=True):
                frames = video.permute(0, 2, 3, 1).numpy()
                even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # libx264
                written.append(write_atomic(path, encode_video(even.copy(), self.fps)))
        prediction["videos"] = None
        prediction["paths"] = [str(p) for p in written]
