"""Resumable, parallel building of one split's shards from a list of source items.

The items (one per source video) are sorted by the preparer and cut into fixed chunks of
``shard_size``; chunk ``i`` becomes shard ``<dataset>-<split>-%06d.tar``. A shard is written whole by
one worker (temporary file, fsync, rename) and then marked done in ``_progress/<shard>.json`` with
the keys it holds and the items it skipped and why. A killed run therefore restarts where it stopped:
done shards are kept as they are, unfinished ones are redone from their first item, and nothing
half-written ever carries a shard's name. ``plan.json`` records the item list and the settings; a rerun
with other settings is refused (``overwrite=True`` rebuilds the split) so that a resumed split never
mixes two configurations.

At the end ``index.json`` (the shard list, as design.md asks) and ``report.json`` (counts of skipped
items by reason, with their ids) are written next to the shards. Items are skipped by raising
:class:`Skip` with a short reason; any other exception is counted under ``error:<type>`` with a
warning naming the item, so one bad video never stops a run (``strict=True`` re-raises instead).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.shard_writer import TMP_SUFFIX, atomic_write_bytes, encode_fields, write_shard

PROGRESS_DIR = "_progress"


class Skip(Exception):
    """An item that cannot become a sample; ``reason`` is a short category counted in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class PlanMismatchError(RuntimeError):
    """The split folder holds shards made from other items or settings."""


@dataclass(frozen=True)
class Item:
    """One source video to turn into a sample: ``id`` (unique, sorted order) and picklable ``data``."""

    id: str
    data: Any = None


# A maker turns an item into (key, fields); it must be picklable (a module-level function or an object).
Maker = Callable[[Item], tuple[str, dict[str, Any]]]


@dataclass
class SplitResult:
    """What :func:`build_split` did: samples, shards, skipped items by reason, shards reused."""

    split: str
    folder: Path
    num_samples: int
    num_shards: int
    skipped: dict[str, int]
    reused_shards: int
    written_shards: int
    index: dict[str, Any] = field(repr=False, default_factory=dict)

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items(), key=lambda x: -x[1]))
        return (
            f"{self.split}: {self.num_samples} samples in {self.num_shards} shard(s) -> {self.folder}"
            f" ({self.written_shards} written, {self.reused_shards} kept from an earlier run)"
            + (f"; skipped {skipped}: {reasons}" if skipped else "")
        )


def shard_name(dataset: str, split: str, index: int) -> str:
    return f"{dataset}-{split}-{index:06d}.tar"


def _plan(dataset: str, split: str, items: Sequence[Item], shard_size: int, settings: dict) -> dict:
    digest = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()
    return {
        "dataset": dataset,
        "split": split,
        "shard_size": shard_size,
        "num_items": len(items),
        "items_sha256": digest,
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
    }


# --------------------------------------------------------------------------- worker side
_PROGRESS_QUEUE: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue


def _tick() -> None:
    if _PROGRESS_QUEUE is not None:
        _PROGRESS_QUEUE.put(1)


def _build_chunk(
    maker: Maker, items: Sequence[Item], shard_path: str, progress_path: str, strict: bool
) -> dict[str, Any]:
    """Make every item of one chunk, write the shard, then its progress record. Returns the record."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    errors: list[str] = []
    for item in items:
        try:
            key, fields = maker(item)
            samples.append((key, encode_fields(key, fields)))
        except Skip as skip:
            skipped.append({"id": item.id, "reason": skip.reason, "detail": skip.detail})
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one bad item must not stop a long run
            if strict:
                raise
            reason = f"error:{type(err).__name__}"
            skipped.append({"id": item.id, "reason": reason, "detail": str(err)[:500]})
            errors.append(f"{item.id}: {''.join(traceback.format_exception_only(err)).strip()}")
        _tick()
    keys = [k for k, _ in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in {shard_path}")
    write_shard(Path(shard_path), samples)
    record = {
        "shard": Path(shard_path).name,
        "items": [i.id for i in items],
        "keys": keys,
        "skipped": skipped,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_bytes(Path(progress_path), json.dumps(record).encode())
    record["errors"] = errors
    return record


# --------------------------------------------------------------------------- driver side
def build_split(
    out: Path | str,
    dataset: str,
    split: str,
    items: Sequence[Item],
    maker: Maker,
    *,
    shard_size: int = 100,
    workers: int = 1,
    settings: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> SplitResult:
    """Build (or finish building) ``out/split`` from ``items``; see the module docstring.

    Args:
        out: output root of the dataset; shards go to ``out/split``.
        items: the source items in their final order (ids unique).
        maker: item -> (sample key, fields); raises :class:`Skip` for items to leave out.
        shard_size: items per shard (a shard holds fewer samples when items are skipped).
        workers: processes (``<= 1`` runs in this process, e.g. for a GPU model).
        settings: everything that changes the samples' content; part of the plan.
        provenance: free-form description stored in ``index.json``.
        overwrite: rebuild the split even if it was made with other settings.
        strict: re-raise unexpected errors instead of counting them.
    """
    from tqdm import tqdm

    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{split}: item ids are not unique")
    folder = Path(out) / split
    progress_dir = folder / PROGRESS_DIR
    plan = _plan(dataset, split, items, shard_size, settings or {})
    plan_path = folder / "plan.json"

    folder.mkdir(parents=True, exist_ok=True)
    existing = json.loads(plan_path.read_text()) if plan_path.exists() else None
    stale_shards = sorted(folder.glob(f"{dataset}-{split}-*.tar"))
    if existing != plan and (existing is not None or stale_shards):
        if not overwrite:
            raise PlanMismatchError(
                f"{folder} holds shards made from other items or settings"
                f" ({_plan_difference(existing, plan)}); pass --overwrite to rebuild this split,"
                " or choose another --out"
            )
    if existing != plan or overwrite:
        for path in [*stale_shards, *progress_dir.glob("*.json")]:
            path.unlink()
        for name in ("index.json", "report.json"):
            (folder / name).unlink(missing_ok=True)
    progress_dir.mkdir(exist_ok=True)
    for leftover in [*folder.glob(f"*{TMP_SUFFIX}"), *progress_dir.glob(f"*{TMP_SUFFIX}")]:
        leftover.unlink()  # temporary files of a killed run
    atomic_write_bytes(plan_path, json.dumps(plan, indent=2).encode())
    (folder / "index.json").unlink(missing_ok=True)  # rewritten at the end, only if all shards are done

    chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    records: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for c in range(len(chunks)):
        name = shard_name(dataset, split, c)
        record_path = progress_dir / f"{name}.json"
        if record_path.exists() and (folder / name).exists():
            records[c] = json.loads(record_path.read_text())
        else:
            todo.append(c)
    reused = len(records)
    done_items = sum(len(chunks[c]) for c in records)
    bar = tqdm(
        total=len(items), initial=done_items, desc=f"{dataset}/{split}", unit="video", disable=not progress
    )
    first_errors: list[str] = []

    def finish(c: int, record: dict[str, Any]) -> None:
        first_errors.extend(record.pop("errors", [])[: max(0, 5 - len(first_errors))])
        records[c] = record

    def args_for(c: int) -> tuple:
        name = shard_name(dataset, split, c)
        return (maker, chunks[c], str(folder / name), str(progress_dir / f"{name}.json"), strict)

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(_InlineTicker(bar))
            try:
                for c in todo:
                    finish(c, _build_chunk(*args_for(c)))
            finally:
                _init_worker(None)
        else:
            context = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
            ticks = context.Queue()
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(ticks,)
            ) as pool:
                pending: dict[Future, int] = {pool.submit(_build_chunk, *args_for(c)): c for c in todo}
                try:
                    while pending:
                        done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
                        _drain(ticks, bar)
                        for future in done:
                            finish(pending.pop(future), future.result())
                    _drain(ticks, bar)
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
    for message in first_errors:
        print(f"warning: {dataset}/{split}: unexpected error, item skipped: {message}", file=sys.stderr)

    shards = [shard_name(dataset, split, c) for c in range(len(chunks))]
    skipped = [s for c in range(len(chunks)) for s in records[c]["skipped"]]
    counts = Counter(s["reason"] for s in skipped)
    num_samples = sum(len(records[c]["keys"]) for c in range(len(chunks)))
    report = {
        "dataset": dataset,
        "split": split,
        "items": len(items),
        "samples": num_samples,
        "skipped": dict(sorted(counts.items())),
        "skipped_items": {
            reason: [{"id": s["id"], "detail": s["detail"]} for s in skipped if s["reason"] == reason]
            for reason in sorted(counts)
        },
    }
    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2).encode())
    index = {
        "dataset": dataset,
        "split": split,
        "num_samples": num_samples,
        "shards": shards,
        "samples_per_shard": [len(records[c]["keys"]) for c in range(len(chunks))],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": {**(provenance or {}), "settings": plan["settings"]},
    }
    atomic_write_bytes(folder / "index.json", json.dumps(index, indent=2).encode())
    return SplitResult(
        split=split,
        folder=folder,
        num_samples=num_samples,
        num_shards=len(shards),
        skipped=dict(counts),
        reused_shards=reused,
        written_shards=len(todo),
        index=index,
    )


class _InlineTicker:
    """Stands in for the worker queue when chunks run in this process."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)


def _drain(ticks: Any, bar: Any) -> None:
    n = 0
    while True:
        try:
            n += ticks.get_nowait()
        except queue.Empty:
            break
        except (EOFError, OSError):
            break
    if n:
        bar.update(n)


def _plan_difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "no plan.json: made by another tool or an older version"
    diffs = [k for k in new if old.get(k) != new.get(k)]
    if "settings" in diffs:
        keys = sorted(
            k
            for k in set(old.get("settings", {})) | set(new["settings"])
            if old.get("settings", {}).get(k) != new["settings"].get(k)
        )
        diffs = [d for d in diffs if d != "settings"] + [f"settings.{k}" for k in keys]
    return "different " + ", ".join(diffs)


def default_workers() -> int:
    """Processes to use by default: the CPUs this process may run on, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, min(8, os.cpu_count() or 1))
