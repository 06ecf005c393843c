"""The latent cache's records (:mod:`data_prep.latents`): which shards are cached with which settings.

Each cached shard has a record ``_latents/<shard>.json`` next to it (the settings, the shard's size and
modification time, the counts); a shard whose record is missing, stale or of other settings is cached
again. ``latents.json`` sums the records per folder once every shard is cached.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from interdyn.errors import InterDynError
from interdyn.utils.files import TMP_SUFFIX, write_atomic

PROGRESS_DIR = "_latents"
Job = tuple[Path, Path, Path]  # (source shard, cached shard, progress record)


class MissingCacheError(InterDynError, ValueError):
    """``--finalize`` found shards that no part has cached with these settings yet."""


def shard_state(src: Path, dst: Path, record: Path, fingerprint: str) -> str:
    """``done`` (cached with these settings), ``other`` (cached with other settings) or ``todo``."""
    if not (record.is_file() and dst.is_file()):
        return "todo"
    try:
        done = json.loads(record.read_text())
    except json.JSONDecodeError:
        return "todo"
    stat = dst.stat()
    if done.get("size") != stat.st_size or done.get("mtime_ns") != stat.st_mtime_ns:
        return "todo"  # the shard changed since (rewritten by a preparer): cache it again
    return "done" if done.get("settings") == fingerprint else "other"


def write_reports(jobs: list[Job], settings: dict[str, Any]) -> None:
    """``latents.json`` in every folder of cached shards: the settings and each shard's counts (no time
    stamps: the same caches give the same bytes, whichever part writes the file)."""
    folders: dict[Path, dict[str, Any]] = {}
    for _, dst, record in jobs:
        counts = json.loads(record.read_text()).get("counts", {})
        folders.setdefault(dst.parent, {})[dst.name] = dict(sorted(counts.items()))
    for folder, shards in folders.items():
        total: Counter = Counter()
        for counts in shards.values():
            total.update(counts)
        report = {"settings": settings, "counts": dict(sorted(total.items())), "shards": shards}
        write_atomic(folder / "latents.json", json.dumps(report, indent=1, sort_keys=True).encode())


def shard_jobs(urls: list[str], out: Path | None) -> list[Job]:
    """``(source shard, cached shard, progress record)`` per shard, in the order of ``urls``."""
    jobs = []
    for url in urls:
        src = Path(url)
        dst = (out / src.name) if out else src
        jobs.append((src, dst, dst.parent / PROGRESS_DIR / (src.name + ".json")))
    return jobs


def finalize(jobs: list[Job], settings: dict[str, Any], fingerprint: str) -> None:
    """``--finalize``: write ``latents.json`` when every shard is cached, else name the missing ones."""
    missing = [j for j, job in enumerate(jobs) if shard_state(*job, fingerprint) != "done"]
    if missing:
        shown = ", ".join(f"{j} ({jobs[j][1].name})" for j in missing[:10]) + (
            ", ..." if len(missing) > 10 else ""
        )
        raise MissingCacheError(
            f"latents: {len(missing)} of {len(jobs)} shards are not cached with these settings: {shown};"
            " shard j belongs to part j mod n of --part i/n: rerun those parts, then finalize again"
        )
    write_reports(jobs, settings)
    print(f"latents: all {len(jobs)} shards are cached; wrote latents.json")


def to_do(mine: list[Job], fingerprint: str, overwrite: bool) -> list[Job]:
    """The shards of this part not cached with these settings yet (an error for shards cached with other
    settings unless ``overwrite``); removes temporary files a killed run left."""
    todo = []
    for src, dst, record in mine:
        for stale in dst.parent.glob(f"{dst.name}*{TMP_SUFFIX}"):  # left by a killed run of this part
            stale.unlink(missing_ok=True)
        state = shard_state(src, dst, record, fingerprint)
        if state == "done":
            continue
        if state == "other" and not overwrite:
            raise ValueError(
                f"{dst} was cached with other settings ({record}); pass --overwrite to rebuild the cache"
            )
        todo.append((src, dst, record))
    return todo


def record_done(dst: Path, record: Path, fingerprint: str, counts: Counter) -> None:
    """Mark ``dst`` cached with the settings ``fingerprint``: its record, with the shard's size and time."""
    record.parent.mkdir(parents=True, exist_ok=True)
    stat = dst.stat()
    entry = {"settings": fingerprint, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "counts": counts}
    write_atomic(record, json.dumps(entry, indent=1).encode())
