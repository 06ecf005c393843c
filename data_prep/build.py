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
warning naming the item, so one bad video never stops a run (``strict=True`` re-raises instead;
many errors in a row stop it). A shard with such errors is kept but redone by the next run, so a
transient failure does not leave holes. Ctrl-C stops the workers at once; run the same command
again to continue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.shard_writer import TMP_SUFFIX, atomic_write_bytes, encode_fields, write_shard

PROGRESS_DIR = "_progress"


class Skip(Exception):
    """An item that cannot become a sample; ``reason`` is a short category counted in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class TooManyErrors(RuntimeError):
    """Many items in a row failed with unexpected errors: something is broken beyond one video."""


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


def fingerprint(value: Any) -> str:
    """A stable text digest of an item's data (str, numbers, None, lists, tuples, dicts, numpy arrays)."""
    if isinstance(value, np.ndarray):
        return (
            f"nd{value.dtype}{value.shape}{hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()}"
        )
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{fingerprint(k)}:{fingerprint(value[k])}" for k in sorted(value, key=str)) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(fingerprint(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fingerprint(dataclasses.asdict(value))
    return repr(value)


def _plan(dataset: str, split: str, items: Sequence[Item], shard_size: int, settings: dict) -> dict:
    digest = hashlib.sha256()
    for item in items:  # ids and what each item points at (a file added later changes the plan)
        digest.update(f"{item.id}\t{fingerprint(item.data)}\n".encode())
    return {
        "dataset": dataset,
        "split": split,
        "shard_size": shard_size,
        "num_items": len(items),
        "items_sha256": digest.hexdigest(),
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
    }


# --------------------------------------------------------------------------- worker side
_PROGRESS_QUEUE: Any = None


def _init_worker(progress_queue: Any, pool_worker: bool = False, parent_pid: int | None = None) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = progress_queue
    if pool_worker:  # Ctrl-C is handled by the parent, which stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """End this pool worker when the preparer that started it dies (SIGKILL, OOM killer): nothing else
    would, as the worker holds its own end of the task queue and would wait on it forever. Its half-made
    shard is a temporary file that the next run removes."""
    if sys.platform.startswith("linux"):  # the kernel kills us the moment the parent goes
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:  # elsewhere (and if the parent died before prctl): poll for re-parenting
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _tick() -> None:
    if _PROGRESS_QUEUE is not None:
        _PROGRESS_QUEUE.put(1)


def _build_chunk(
    maker: Maker, items: Sequence[Item], shard_path: str, progress_path: str, strict: bool, max_errors: int
) -> dict[str, Any]:
    """Make every item of one chunk, write the shard, then its progress record. Returns the record.

    A chunk where an item failed with an unexpected error is written (its good samples are usable) but
    its record says so, and a rerun makes it again: a transient failure (GPU, network storage) heals.
    """
    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    errors_in_a_row = 0
    for item in items:
        try:
            key, fields = maker(item)
            samples.append((key, encode_fields(key, fields)))
            errors_in_a_row = 0
        except Skip as skip:
            skipped.append({"id": item.id, "reason": skip.reason, "detail": skip.detail})
            errors_in_a_row = 0
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one bad item must not stop a long run
            if strict:
                raise
            message = "".join(traceback.format_exception_only(err)).strip()
            print(f"warning: {item.id}: unexpected error, skipped: {message}", file=sys.stderr, flush=True)
            skipped.append({"id": item.id, "reason": f"error:{type(err).__name__}", "detail": message[:500]})
            errors_in_a_row += 1
            if errors_in_a_row >= max_errors:
                raise TooManyErrors(
                    f"{errors_in_a_row} videos in a row failed with unexpected errors (last: {item.id}: {message});"
                    " stopping. Fix the cause and run the same command again: finished shards are kept"
                ) from err
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
        "errors": sum(s["reason"].startswith("error:") for s in skipped),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_bytes(Path(progress_path), json.dumps(record).encode())
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
    max_errors: int = 20,
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
        max_errors: stop after this many unexpected errors in a row within a shard.
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
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        if record is not None and (folder / name).exists() and not record.get("errors"):
            records[c] = record
        else:  # never made, interrupted, or made with errors that may not happen again
            todo.append(c)
    reused = len(records)
    done_items = sum(len(chunks[c]) for c in records)
    tqdm.monitor_interval = 0  # no monitor thread: the pool below forks
    bar = tqdm(
        total=len(items), initial=done_items, desc=f"{dataset}/{split}", unit="video", disable=not progress
    )

    def args_for(c: int) -> tuple:
        name = shard_name(dataset, split, c)
        return (maker, chunks[c], str(folder / name), str(progress_dir / f"{name}.json"), strict, max_errors)

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(_InlineTicker(bar))
            try:
                for c in todo:
                    records[c] = _build_chunk(*args_for(c))
            finally:
                _init_worker(None)
        else:
            context = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
            ticks = context.Queue()
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(ticks, True, os.getpid()),
            )
            try:
                pending: dict[Future, int] = {pool.submit(_build_chunk, *args_for(c)): c for c in todo}
                while pending:
                    done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(ticks, bar)
                    for future in done:
                        records[pending.pop(future)] = future.result()
                _drain(ticks, bar)
                pool.shutdown(wait=True)
            except BaseException:
                # stop now: queued chunks are dropped and running ones killed (their .tmp files are
                # removed by the next run), instead of waiting for every queued chunk to finish
                processes = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.join(timeout=10)
                raise
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\ninterrupted: {len(records)} of {len(chunks)} shards of {dataset}/{split} are finished and kept;"
            " run the same command again to continue",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    num_errors = sum(records[c].get("errors", 0) for c in records)
    if num_errors:
        print(
            f"warning: {dataset}/{split}: {num_errors} videos failed with unexpected errors (see report.json);"
            " a rerun of the same command retries their shards",
            file=sys.stderr,
        )

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
