"""Writes shards (the format of :mod:`interdyn.data.shard_format`) atomically; shared by every preparer.

Every file is written under a temporary name and renamed when complete, so a crash or Ctrl-C never
leaves a half-written shard or index that looks valid; leftovers of killed runs are removed when a
writer opens the same split again.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interdyn.data.shard_format import INDEX_FILE, encode_fields, shard_name
from interdyn.files import TMP_SUFFIX, atomic_file, write_atomic


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
    """Write a whole shard (already encoded samples) through :func:`interdyn.files.atomic_file`.
    An empty list gives a valid empty tar (keeps shard numbering contiguous)."""
    with atomic_file(path) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, encoded in samples:
                add_sample(tar, key, encoded)


@dataclass
class ShardWriter:
    """Streams samples into ``<out>/<split>/<dataset>-<split>-%06d.tar``.

    Use as a context manager; a shard becomes visible (renamed from ``.tar.tmp``) only when it is
    complete, and ``index.json`` is written last, on a clean exit.

    Args:
        out: output root; files go to ``out/split``.
        dataset, split: used in the shard names and the index.
        max_count: samples per shard.
        max_bytes: start a new shard past this size.
        provenance: free-form description stored in the index (command, arguments, source).
    """

    out: Path | str
    dataset: str
    split: str
    max_count: int = 200
    max_bytes: int = 1 << 30
    provenance: dict[str, Any] = field(default_factory=dict)
    _tar: tarfile.TarFile | None = field(default=None, init=False, repr=False)
    _shard_index: int = field(default=0, init=False)
    _in_shard: int = field(default=0, init=False)
    _bytes: int = field(default=0, init=False)
    shards: list[str] = field(default_factory=list, init=False)
    count: int = field(default=0, init=False)
    _keys: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.out) / self.split
        self.folder.mkdir(parents=True, exist_ok=True)
        # A split is rewritten as a whole: drop temporary files of killed runs, the old index (so a crash
        # of this run cannot leave an index describing other shards) and the old shards of this split
        # (a smaller rewrite must not leave stale shards that globs would still read).
        for leftover in self.folder.glob(f"*{TMP_SUFFIX}"):
            leftover.unlink()
        (self.folder / INDEX_FILE).unlink(missing_ok=True)
        for old in self.folder.glob(f"{self.dataset}-{self.split}-*.tar"):
            old.unlink()

    def shard_name(self, index: int) -> str:
        return shard_name(self.dataset, self.split, index)

    def _open(self) -> None:
        path = self.folder / (self.shard_name(self._shard_index) + TMP_SUFFIX)
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self._in_shard, self._bytes = 0, 0

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        fileobj = self._tar.fileobj
        self._tar.close()
        if fileobj is not None and not fileobj.closed:
            fileobj.flush()
            os.fsync(fileobj.fileno())
        name = self.shard_name(self._shard_index)
        os.replace(self.folder / (name + TMP_SUFFIX), self.folder / name)
        self.shards.append(name)
        self._tar = None
        self._shard_index += 1

    def write(self, key: str, fields: dict[str, bytes | dict]) -> None:
        """Add one sample. ``fields`` maps extensions (``video.mp4``, ``masks.npz``, ``json``) to bytes,
        or a dict for ``json``."""
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        encoded = encode_fields(key, fields)
        if self._tar is None:
            self._open()
        self._bytes += add_sample(self._tar, key, encoded)
        self._keys.add(key)
        self._in_shard += 1
        self.count += 1
        if self._in_shard >= self.max_count or self._bytes >= self.max_bytes:
            self._finish_shard()

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write ``index.json``; returns the index."""
        self._finish_shard()
        index = {
            "dataset": self.dataset,
            "split": self.split,
            "num_samples": self.count,
            "shards": self.shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "provenance": self.provenance,
        }
        write_atomic(self.folder / INDEX_FILE, json.dumps(index, indent=2))
        return index

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file) without writing the index."""
        if self._tar is not None:
            name = self.folder / (self.shard_name(self._shard_index) + TMP_SUFFIX)
            self._tar.close()
            self._tar = None
            name.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # includes KeyboardInterrupt: complete shards stay, the partial one goes
            self.abort()
