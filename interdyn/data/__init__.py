"""Data: shard streaming, clip sampling, joint transforms and DataModules (batches per :mod:`interdyn.contract`)."""

from interdyn.data.datamodule import ShardDataModule
from interdyn.data.shards import ClipDecoder, ShardClipStream, SkippedSampleWarning, expand_urls
from interdyn.data.toy import MovingShapesDataModule, MovingShapesDataset

__all__ = [
    "ClipDecoder",
    "MovingShapesDataModule",
    "MovingShapesDataset",
    "ShardClipStream",
    "ShardDataModule",
    "SkippedSampleWarning",
    "expand_urls",
]
