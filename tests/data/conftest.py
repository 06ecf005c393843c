"""Fixtures: small shards of the built-in dataset, written once per session with the real writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.synthetic import World, write_split

FRAMES, FPS = 30, 14.0


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 8 clips in 2 shards; validation: 10 clips in 4 shards; test: 2 groups x 2 variants."""
    out = tmp_path_factory.mktemp("shards")
    world = World(height=64, width=96)
    write_split(
        out, "train", 8, seed=0, world=world, num_frames=FRAMES, fps=FPS, shard_size=4, progress=False
    )
    write_split(
        out, "validation", 10, seed=0, world=world, num_frames=FRAMES, fps=FPS, shard_size=3, progress=False
    )
    write_split(
        out,
        "test",
        2,
        seed=0,
        world=world,
        num_frames=FRAMES,
        fps=FPS,
        variants=2,
        shard_size=4,
        progress=False,
    )
    return out
