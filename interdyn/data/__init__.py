"""Data: datasets and DataModules that produce batches per :mod:`interdyn.contract`."""

from interdyn.data.toy import MovingShapesDataModule, MovingShapesDataset

__all__ = ["MovingShapesDataModule", "MovingShapesDataset"]
