"""Resumable, parallel building of one split's shards from a list of source items.

The items (one per source video) are sorted by the preparer and cut into fixed chunks of
``shard_size``; chunk ``i`` becomes shard ``<dataset>-<split>-%06d.tar``. A shard is written whole by
one worker (temporary file, fsync, rename) and then marked done in ``_progress/<shard>.json`` with
the keys it holds and the items it skipped and why. A killed run therefore restarts where it stopped:
done shards are kept as they are, unfinished ones are redone from their first item, and nothing
half-written ever carries a shard's name. ``plan.json`` records the item list and the settings; a rerun
with other settings is refused (``overwrite=True`` rebuilds the split) so that a resumed split never
mixes two configurations.

At the end ``index.json`` (the shard list) and ``report.json`` (counts of skipped items by reason, with
their ids) are written next to the shards, from the per-chunk records alone.

Parts: ``part=Part(i, n)`` (see :mod:`data_prep.parts`) makes only chunks ``i, i + n, ...``; parts may run
at once or at different times, on machines sharing the output folder (no locks: every file has one
writer, or identical content written through a rename). A shard's bytes depend only on its chunk, so n
parts give the same shards, index and report as one process. The last part to find every chunk done
writes the index and report; ``finalize_only=True`` does it on demand and names the missing chunks. Items are skipped by raising
:class:`SkipSample` with a short reason; any other exception is counted under ``error:<type>`` with a
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

from data_prep.parts import Part
from data_prep.shard_writer import TMP_SUFFIX, atomic_write_bytes, write_shard
from interdyn.data.shard_format import SkipSample, encode_fields, shard_name

PROGRESS_DIR = "_progress"


class TooManyErrors(RuntimeError):
    """Many items in a row failed with unexpected errors: something is broken beyond one video."""


class PlanMismatchError(RuntimeError):
    """The split folder holds shards made from other items or settings."""


class MissingChunksError(RuntimeError):
    """The index was asked for while chunks of the plan are not finished (or no part has run yet)."""


# Throughput counters of the item being made (e.g. SAM2 frames); see :func:`count`.
_COUNTERS: Counter = Counter()


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (e.g. ``sam2_frames``) from inside a maker: each chunk's record
    keeps its counters and each part reports them per second."""
    _COUNTERS[name] += n


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
    part: str = "0/1"
    finalized: bool = True
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    videos_made: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def throughput(self) -> str:
        """This process's work: videos (items) made per second and every counter per second."""
        rate = self.videos_made / self.seconds if self.seconds > 0 else 0.0
        extra = "".join(
            f", {n} {name.replace('_', ' ')} ({n / self.seconds if self.seconds > 0 else 0.0:.1f}/s)"
            for name, n in sorted(self.counters.items())
        )
        return f"{self.videos_made} videos in {self.seconds:.1f} s ({rate:.2f} videos/s{extra})"

    def summary(self) -> str:
        who = f"{self.split}" + (f" part {self.part}" if self.part != "0/1" else "")
        made = f"{self.written_shards} shard(s) written, {self.reused_shards} kept from an earlier run"
        if not self.finalized:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            return (
                f"{who}: {made}; {self.throughput()}. Not indexed yet: {len(self.missing)} shard(s) of other"
                f" parts are not finished ({shown}); the last part to finish writes index.json"
                " (or run the same command with --finalize)"
            )
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items(), key=lambda x: -x[1]))
        return (
            f"{who}: {self.num_samples} samples in {self.num_shards} shard(s) -> {self.folder}"
            f" ({made}; {self.throughput()})" + (f"; skipped {skipped}: {reasons}" if skipped else "")
        )


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
    maker: Maker,
    items: Sequence[Item],
    shard_path: str,
    progress_path: str,
    strict: bool,
    max_errors: int,
    plan_id: str = "",
    part: str = "0/1",
) -> dict[str, Any]:
    """Make every item of one chunk, write the shard, then its progress record. Returns the record.

    A chunk where an item failed with an unexpected error is written (its good samples are usable) but
    its record says so, and a rerun makes it again: a transient failure (GPU, network storage) heals.
    """
    samples: list[tuple[str, dict[str, bytes]]] = []
    skipped: list[dict[str, str]] = []
    errors_in_a_row = 0
    _COUNTERS.clear()
    started = time.monotonic()
    for item in items:
        try:
            key, fields = maker(item)
            samples.append((key, encode_fields(key, fields)))
            errors_in_a_row = 0
        except SkipSample as skip:
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
        "plan": plan_id,  # a record of another plan is never taken for this one's
        "part": part,
        "seconds": round(time.monotonic() - started, 3),
        "counters": dict(_COUNTERS),
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
    part: Part | None = None,
    finalize_only: bool = False,
) -> SplitResult:
    """Build (or finish building) ``out/split`` from ``items``; see the module docstring.

    Args:
        out: output root of the dataset; shards go to ``out/split``.
        items: the source items in their final order (ids unique).
        maker: item -> (sample key, fields); raises :class:`SkipSample` for items to leave out.
        shard_size: items per shard (a shard holds fewer samples when items are skipped).
        workers: processes (``<= 1`` runs in this process, e.g. for a GPU model).
        settings: everything that changes the samples' content; part of the plan.
        provenance: free-form description stored in ``index.json``.
        overwrite: rebuild the split even if it was made with other settings.
        strict: re-raise unexpected errors instead of counting them.
        max_errors: stop after this many unexpected errors in a row within a shard.
        part: make only this part's chunks (default: all of them, in this process).
        finalize_only: make nothing; write ``index.json`` and ``report.json`` if every chunk is done,
            else raise :class:`MissingChunksError` naming the missing ones.
    """
    from tqdm import tqdm

    part = part or Part()
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{split}: item ids are not unique")
    folder = Path(out) / split
    progress_dir = folder / PROGRESS_DIR
    plan = _plan(dataset, split, items, shard_size, settings or {})
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    plan_path = folder / "plan.json"
    chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    names = [shard_name(dataset, split, c) for c in range(len(chunks))]

    def finalize() -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        records = {c: _read_record(folder, names[c], plan_id) for c in range(len(chunks))}
        missing = [c for c, r in records.items() if r is None]
        if missing:
            raise MissingChunksError(_missing_message(dataset, split, names, missing))
        index = _write_index(folder, dataset, split, len(items), names, records, plan, provenance)
        return records, index  # type: ignore[return-value]

    if finalize_only:
        existing = json.loads(plan_path.read_text()) if plan_path.exists() else None
        if existing is None:
            raise MissingChunksError(f"{folder} has no plan.json: no part of {dataset}/{split} has run yet")
        if existing != plan:
            raise PlanMismatchError(
                f"{folder} was planned from other items or settings ({_plan_difference(existing, plan)});"
                " finalize with the same arguments as the parts"
            )
        records, index = finalize()
        return _result(folder, split, records, index, part, reused=len(records), written=0)

    folder.mkdir(parents=True, exist_ok=True)
    mine = part.chunks(len(chunks))
    # shards before the plan: a part that wrote a shard had written plan.json first
    stale_shards = sorted(folder.glob(f"{dataset}-{split}-*.tar"))
    existing = json.loads(plan_path.read_text()) if plan_path.exists() else None
    if existing != plan and (existing is not None or stale_shards):
        if not overwrite:
            raise PlanMismatchError(
                f"{folder} holds shards made from other items or settings"
                f" ({_plan_difference(existing, plan)}); pass --overwrite to rebuild this split,"
                " or choose another --out"
            )
    if existing != plan or overwrite:
        if part.whole:
            remove = [*stale_shards, *progress_dir.glob("*.json")]
        else:  # other parts may be at work: only this part's chunks and shards no chunk owns any more
            remove = [folder / names[c] for c in mine] + [progress_dir / f"{names[c]}.json" for c in mine]
            owned = set(names)
            remove += [p for p in stale_shards if p.name not in owned]
        for path in remove:
            path.unlink(missing_ok=True)
        for name in ("index.json", "report.json"):
            (folder / name).unlink(missing_ok=True)
    progress_dir.mkdir(exist_ok=True)
    if part.whole:
        leftovers = [*folder.glob(f"*{TMP_SUFFIX}"), *progress_dir.glob(f"*{TMP_SUFFIX}")]
    else:  # temporary files of other parts may be in use: only this part's own
        leftovers = [
            p for c in mine for d in (folder, progress_dir) for p in d.glob(f"{names[c]}*{TMP_SUFFIX}")
        ]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)  # temporary files of a killed run
    if existing != plan:
        atomic_write_bytes(plan_path, json.dumps(plan, indent=2).encode())

    records: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for c in mine:
        record = _read_record(folder, names[c], plan_id)
        if record is not None and not record.get("errors"):
            records[c] = record
        else:  # never made, interrupted, or made with errors that may not happen again
            todo.append(c)
    if todo:
        (folder / "index.json").unlink(missing_ok=True)  # rewritten at the end, only if all shards are done
    reused = len(records)
    done_items = sum(len(chunks[c]) for c in records)
    tqdm.monitor_interval = 0  # no monitor thread: the pool below forks
    bar = tqdm(
        total=sum(len(chunks[c]) for c in mine),
        initial=done_items,
        desc=f"{dataset}/{split}" + ("" if part.whole else f" part {part}"),
        unit="video",
        disable=not progress,
    )
    started = time.monotonic()
    made: Counter = Counter()

    def finished(c: int, record: dict[str, Any]) -> None:
        records[c] = record
        made.update(record.get("counters") or {})
        seconds = time.monotonic() - started
        if made and seconds > 0:
            bar.set_postfix_str(
                ", ".join(f"{k.replace('_', ' ')} {v / seconds:.1f}/s" for k, v in made.items())
            )

    def args_for(c: int) -> tuple:
        name = names[c]
        return (
            maker, chunks[c], str(folder / name), str(progress_dir / f"{name}.json"), strict, max_errors,
            plan_id, str(part),
        )  # fmt: skip

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(_InlineTicker(bar))
            try:
                for c in todo:
                    finished(c, _build_chunk(*args_for(c)))
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
                        c = pending.pop(future)
                        finished(c, future.result())
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
            f"\ninterrupted: {len(records)} of {len(mine)} shards of {dataset}/{split}"
            + ("" if part.whole else f" part {part}")
            + " are finished and kept; run the same command again to continue",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    seconds = time.monotonic() - started
    num_errors = sum(records[c].get("errors", 0) for c in records)
    if num_errors:
        print(
            f"warning: {dataset}/{split}: {num_errors} videos failed with unexpected errors (see report.json);"
            " a rerun of the same command retries their shards",
            file=sys.stderr,
        )

    stats = {"seconds": seconds, "videos_made": sum(len(chunks[c]) for c in todo), "counters": dict(made)}
    if not part.whole:  # the last part to finish writes the index; earlier ones say what is missing
        others = [c for c in range(len(chunks)) if not part.owns(c)]
        missing = [c for c in others if _read_record(folder, names[c], plan_id) is None]
        if missing:
            return _result(
                folder,
                split,
                records,
                {},
                part,
                reused,
                len(todo),
                missing=[names[c] for c in missing],
                **stats,
            )
    all_records, index = finalize()
    return _result(folder, split, all_records, index, part, reused, len(todo), **stats)


def _read_record(folder: Path, name: str, plan_id: str) -> dict[str, Any] | None:
    """The progress record of shard ``name`` if it is finished for the plan ``plan_id``, else None."""
    try:
        record = json.loads((folder / PROGRESS_DIR / f"{name}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("plan") != plan_id or not (folder / name).exists():
        return None
    return record


def _missing_message(dataset: str, split: str, names: list[str], missing: list[int]) -> str:
    shown = ", ".join(f"{c} ({names[c]})" for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
    return (
        f"{dataset}/{split}: {len(missing)} of {len(names)} chunks are not finished: {shown};"
        " chunk c belongs to part c mod n of --part i/n: rerun those parts, then finalize again"
    )


def _write_index(
    folder: Path,
    dataset: str,
    split: str,
    num_items: int,
    names: list[str],
    records: dict[int, dict[str, Any]],
    plan: dict[str, Any],
    provenance: dict[str, Any] | None,
) -> dict[str, Any]:
    """``report.json`` and ``index.json`` from the chunk records alone (no time stamps: the same records
    give the same bytes, whichever part writes them)."""
    order = range(len(names))
    skipped = [s for c in order for s in records[c]["skipped"]]
    counts = Counter(s["reason"] for s in skipped)
    num_samples = sum(len(records[c]["keys"]) for c in order)
    report = {
        "dataset": dataset,
        "split": split,
        "items": num_items,
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
        "shards": list(names),
        "samples_per_shard": [len(records[c]["keys"]) for c in order],
        "provenance": {**(provenance or {}), "settings": plan["settings"]},
    }
    atomic_write_bytes(folder / "index.json", json.dumps(index, indent=2).encode())
    return index


def _result(
    folder: Path,
    split: str,
    records: dict[int, dict[str, Any]],
    index: dict[str, Any],
    part: Part,
    reused: int,
    written: int,
    missing: list[str] | None = None,
    seconds: float = 0.0,
    videos_made: int = 0,
    counters: dict[str, int] | None = None,
) -> SplitResult:
    skipped = Counter(s["reason"] for r in records.values() for s in r["skipped"])
    return SplitResult(
        split=split,
        folder=folder,
        num_samples=sum(len(r["keys"]) for r in records.values()),
        num_shards=len(index.get("shards", [])) or len(records),
        skipped=dict(skipped),
        reused_shards=reused,
        written_shards=written,
        index=index,
        part=str(part),
        finalized=bool(index),
        missing=list(missing or []),
        seconds=seconds,
        videos_made=videos_made,
        counters=dict(counters or {}),
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
