"""An in-memory toy interaction dataset: a driver square pushes a disc across a plain background.

Generated on the fly from a seed (no files), it exists so that the tiny configuration, the tests and
smoke runs have real, learnable data with the batch layout of :mod:`interdyn.contract` before any
shard is prepared. Each clip: a coloured disc at rest, a square driver entering from the left at a
constant speed; once the square touches the disc, the disc moves with it. The control signal is the
driver's mask.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from interdyn.contract import masks_to_control
from interdyn.data.clip_spec import PAPER_CLIP

# The default clip: the paper's frame count (SVD's 14) of 64 x 64 pixels (the tiny UNet's size).
NUM_FRAMES = PAPER_CLIP.num_frames
SIZE = 64


class MovingShapesDataset(Dataset):
    """Deterministic clips ``{pixel_values (T,3,H,W) in [-1,1], control (T,3,H,W) in {-1,1}, key}``."""

    def __init__(
        self,
        num_videos: int,
        num_frames: int = NUM_FRAMES,
        height: int = SIZE,
        width: int = SIZE,
        seed: int = 0,
    ) -> None:
        if num_videos < 1 or num_frames < 1:
            raise ValueError("num_videos and num_frames must be positive")
        self.num_videos, self.num_frames, self.height, self.width, self.seed = (
            num_videos,
            num_frames,
            height,
            width,
            seed,
        )

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_videos:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        h, w, t = self.height, self.width, self.num_frames
        background = rng.uniform(0.1, 0.4, size=3)
        driver_colour, disc_colour = rng.uniform(0.6, 1.0, size=3), rng.uniform(0.5, 1.0, size=3)[::-1]
        side = max(2, int(min(h, w) * rng.uniform(0.15, 0.25)))
        radius = max(2, int(min(h, w) * rng.uniform(0.08, 0.14)))
        cy = int(rng.integers(side, h - side))
        disc_x0 = float(rng.uniform(0.4, 0.6) * w)
        speed = float(rng.uniform(0.06, 0.1) * w)
        yy, xx = np.mgrid[0:h, 0:w]
        frames = np.empty((t, h, w, 3), dtype=np.float32)
        masks = np.zeros((t, h, w), dtype=bool)
        for k in range(t):
            front = -side + 0.5 * side + k * speed  # right edge of the driver square
            disc_x = max(disc_x0, front + radius)  # pushed once touched
            driver = (xx >= front - side) & (xx < front) & (abs(yy - cy) < side / 2)
            disc = (xx - disc_x) ** 2 + (yy - cy) ** 2 <= radius**2
            img = np.broadcast_to(background, (h, w, 3)).copy()
            img[disc] = disc_colour
            img[driver] = driver_colour
            frames[k], masks[k] = img, driver
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2) * 2.0 - 1.0
        control = masks_to_control(torch.from_numpy(masks))[0]
        return {
            "pixel_values": pixels.contiguous(),
            "control": control,
            "key": f"toy-{self.seed}-{index:06d}",
        }


class MovingShapesDataModule(L.LightningDataModule):
    """DataModule over :class:`MovingShapesDataset` (train / val / test / predict splits by seed).

    Args:
        num_train, num_val, num_test: clips per split (predict uses the test split).
        num_frames, height, width: clip shape (height and width multiples of 8; 64 for the tiny UNet).
        batch_size, num_workers: loader settings.
        seed: base seed; the splits use ``seed``, ``seed + 1`` and ``seed + 2``.
    """

    def __init__(
        self,
        num_train: int = 32,
        num_val: int = 4,
        num_test: int = 4,
        num_frames: int = NUM_FRAMES,
        height: int = SIZE,
        width: int = SIZE,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def _dataset(self, n: int, offset: int) -> MovingShapesDataset:
        hp = self.hparams
        return MovingShapesDataset(n, hp.num_frames, hp.height, hp.width, seed=hp.seed + offset)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.hparams.num_train, 0), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.hparams.num_val, 1), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.hparams.num_test, 2), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
