"""The worker side of :mod:`data_prep.build`: making one chunk of items into one shard.

Every item is made by the preparer's *maker*; an item it cannot use is skipped by raising
:class:`~interdyn.data.shard_format.SkipSample` with a short reason, any other exception is counted
under ``error:<type>`` with a warning naming the item (``strict`` re-raises instead; many errors in a
row raise :class:`TooManyErrors`). The shard is written whole through a temporary file, then the
chunk's progress record (keys, skipped items, counters): a record exists only for a finished shard.
Pool workers tick a progress queue once per item and end with the process that started them.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.shard_writer import write_shard
from interdyn.data.shard_format import SkipSample, encode_fields
from interdyn.utils.files import write_atomic


class TooManyErrors(RuntimeError):
    """Many items in a row failed with unexpected errors: something is broken beyond one video."""


# Throughput counters of the item being made (e.g. SAM2 frames); see :func:`count`.
_COUNTERS: Counter = Counter()


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (e.g. ``sam2_frames``) from inside a maker: each chunk's record
    keeps its counters and each part reports them per second."""
    _COUNTERS[name] += n


@dataclass(frozen=True)
class Item:
    """One source video (or a group of videos made together) to turn into samples: ``id`` (unique, sorted
    order) and picklable ``data``."""

    id: str
    data: Any = None


Sample = tuple[str, dict[str, Any]]
# A maker turns an item into (key, fields), or a list of them (e.g. the variants of a counterfactual
# group); it must be picklable (a module-level function or an object).
Maker = Callable[[Item], Sample | list[Sample]]


_PROGRESS_QUEUE: Any = None


def init_worker(progress_queue: Any, pool_worker: bool = False, parent_pid: int | None = None) -> None:
    """Set where this process ticks its progress; in a pool worker also ignore Ctrl-C (the parent stops
    the pool) and end with ``parent_pid``."""
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


def _as_list(made: Sample | list[Sample]) -> list[Sample]:
    return made if isinstance(made, list) else [made]


def build_chunk(
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
            made = maker(item)
            samples += [(key, encode_fields(key, fields)) for key, fields in _as_list(made)]
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
    write_atomic(Path(progress_path), json.dumps(record).encode())
    return record


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


def run_chunks(jobs: dict[int, tuple], workers: int, bar: Any, finished: Callable[[int, dict], None]) -> None:
    """Run ``build_chunk(*jobs[c])`` for every chunk ``c``: in this process (``workers <= 1`` or a single
    chunk, e.g. for a GPU model) or in a pool of ``workers`` processes; ``finished(c, record)`` is called
    as each chunk ends and ``bar`` (a tqdm bar) advances per item. On any exception, Ctrl-C included,
    the pool stops at once: queued chunks are dropped and running ones killed (their temporary files are
    removed by the next run) instead of waiting for every queued chunk to finish."""
    if workers <= 1 or len(jobs) <= 1:
        init_worker(_InlineTicker(bar))
        try:
            for c, args in jobs.items():
                finished(c, build_chunk(*args))
        finally:
            init_worker(None)
        return
    context = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    ticks = context.Queue()
    before = set(mp.active_children())
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=init_worker, initargs=(ticks, True, os.getpid())
    )
    try:
        pending: dict[Future, int] = {pool.submit(build_chunk, *args): c for c, args in jobs.items()}
        while pending:
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(ticks, bar)
            for future in done:
                finished(pending.pop(future), future.result())
        _drain(ticks, bar)
        pool.shutdown(wait=True)
    except BaseException:
        # the pool's worker processes: the children started since the pool was made
        workers_started = [p for p in mp.active_children() if p not in before]
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_started:
            process.terminate()
        for process in workers_started:
            process.join(timeout=10)
        raise
