"""Writes shards (the format of :mod:`interdyn.data.shard_format`) atomically: the one shard writer of
every preparer (through :func:`data_prep.build.build_split`) and of the latent cache.

A shard is written under a temporary name and renamed when complete, so a crash or Ctrl-C never leaves a
half-written shard that looks valid; the builder removes the leftovers of killed runs.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from interdyn.data.shard_format import encode_fields
from interdyn.utils.files import atomic_file


def add_sample(tar: tarfile.TarFile, key: str, encoded: dict[str, bytes]) -> int:
    """Append one sample's encoded fields to an open tar; returns the bytes added."""
    size = 0
    for ext, data in encoded.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        # a fixed time stamp: the same samples give the same bytes, whenever and wherever they are written
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
        size += len(data)
    return size


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write a whole shard (already encoded samples) through :func:`interdyn.utils.files.atomic_file`.
    An empty list gives a valid empty tar (keeps shard numbering contiguous)."""
    with atomic_file(path) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, encoded in samples:
                add_sample(tar, key, encoded)


def write_samples(path: Path, samples: Iterable[tuple[str, dict[str, Any]]]) -> Path:
    """Encode samples (``(key, fields)`` as a maker returns them) and write them as one shard at ``path``,
    creating its folder; for small hand-made shards (tests, benchmarks). Returns the path."""
    encoded = [(key, encode_fields(key, fields)) for key, fields in samples]
    keys = [key for key, _ in encoded]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in {path}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_shard(Path(path), encoded)
    return Path(path)
