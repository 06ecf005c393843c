"""Resumable, parallel building of one split's shards from a list of source items.

The items (one per source video, or per group of videos made together such as the variants of a
counterfactual group) are sorted by the preparer and cut into fixed chunks of
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
writes the index and report; ``finalize_only=True`` does it on demand and names the missing chunks.
Items are skipped by raising :class:`~interdyn.data.shard_format.SkipSample` with a short reason; any other exception is counted under ``error:<type>`` with a
warning naming the item, so one bad video never stops a run (``strict=True`` re-raises instead;
many errors in a row stop it). A shard with such errors is kept but redone by the next run, so a
transient failure does not leave holes. Ctrl-C stops the workers at once; run the same command
again to continue.

:mod:`data_prep.split_plan` holds the plan, the progress records and the index; :mod:`data_prep.chunk`
makes one chunk (the worker side) and runs the chunks in this process or a pool.

Time: ``times`` (an :class:`~interdyn.utils.timing.PhaseTimes` the preparer prints once at its end) gets the
split's phases: planning, ``building <split>`` (clips made by this process and clips/s) and indexing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.chunk import Item, Maker, TooManyErrors, count, run_chunks
from data_prep.parts import Part
from data_prep.split_plan import (
    MissingChunksError,
    PlanMismatchError,
    SplitPlan,
    fingerprint,
    plan_difference,
)
from interdyn.utils.files import TMP_SUFFIX, write_atomic
from interdyn.utils.timing import PhaseTimes, per_second

__all__ = [
    "Item",
    "Maker",
    "MissingChunksError",
    "PlanMismatchError",
    "SplitPlan",
    "SplitResult",
    "TooManyErrors",
    "build_split",
    "count",
    "default_workers",
    "fingerprint",
]


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
    times: PhaseTimes | None = None,
) -> SplitResult:
    """Build (or finish building) ``out/split`` from ``items``; see the module docstring.

    The phases: plan the chunks; check the folder against an earlier plan and clear what is stale
    (:func:`_prepare_folder`); find this part's unfinished chunks; make them (:func:`~data_prep.chunk.run_chunks`);
    write the index once every chunk of the split is done (:func:`_conclude`).

    Args:
        out: output root of the dataset; shards go to ``out/split``.
        items: the source items in their final order (ids unique).
        maker: item -> (sample key, fields), or a list of them; raises :class:`SkipSample` for items to
            leave out.
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
        times: where the phases' seconds go (see the module docstring); a record of its own if not given.
    """
    part = part or Part()
    times = times if times is not None else PhaseTimes(f"{dataset}/{split}")
    with times.phase(PLANNING):
        plan = SplitPlan.make(out, dataset, split, items, shard_size, settings, provenance)
        if not finalize_only:
            mine = part.chunks(len(plan.chunks))
            _prepare_folder(plan, mine, part, overwrite)
            records, todo = _unfinished(plan, mine)
    if finalize_only:
        with times.phase(INDEXING):
            return _finalize_only(plan, part)
    reused = len(records)
    started = time.monotonic()
    made: Counter = Counter()
    try:
        made = _make_chunks(plan, mine, todo, records, maker, part, workers, strict, max_errors, progress)
    finally:  # interrupted too: the clips made until then
        seconds = time.monotonic() - started
        clips = sum(len(records[c]["keys"]) for c in todo if c in records)
        kept = f", {reused} shard(s) kept from an earlier run" if reused else ""
        name = f"building {split}" + ("" if part.whole else f" part {part}")
        times.add(name, seconds, per_second(clips, "clips", seconds) + kept)
    stats = {
        "seconds": seconds,
        "videos_made": sum(len(plan.chunks[c]) for c in todo),
        "counters": dict(made),
    }
    with times.phase(INDEXING):
        return _conclude(plan, part, records, reused, len(todo), stats)


PLANNING = "planning (items, folder)"
INDEXING = "indexing (index.json, report.json)"


def _unfinished(plan: SplitPlan, mine: list[int]) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """The records of this part's finished chunks, and the chunks still to make (the stale index goes)."""
    records: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for c in mine:
        record = plan.record(c)
        if record is not None and not record.get("errors"):
            records[c] = record
        else:  # never made, interrupted, or made with errors that may not happen again
            todo.append(c)
    if todo:
        (plan.folder / "index.json").unlink(missing_ok=True)  # rewritten at the end, once all shards are done
    return records, todo


def _finalize_only(plan: SplitPlan, part: Part) -> SplitResult:
    """``--finalize``: the index of a split whose parts have all run with the same plan."""
    existing = plan.stored()
    if existing is None:
        raise MissingChunksError(
            f"{plan.folder} has no plan.json: no part of {plan.dataset}/{plan.split} has run yet"
        )
    if existing != plan.plan:
        raise PlanMismatchError(
            f"{plan.folder} was planned from other items or settings ({plan_difference(existing, plan.plan)});"
            " finalize with the same arguments as the parts"
        )
    records, index = plan.finalize()
    return _result(plan.folder, plan.split, records, index, part, reused=len(records), written=0)


def _prepare_folder(plan: SplitPlan, mine: list[int], part: Part, overwrite: bool) -> None:
    """Refuse a folder made with another plan (unless ``overwrite``), clear what a new plan makes stale
    and the temporary files of killed runs, and write ``plan.json``."""
    folder, names = plan.folder, plan.names
    folder.mkdir(parents=True, exist_ok=True)
    # shards before the plan: a part that wrote a shard had written plan.json first
    stale_shards = sorted(folder.glob(f"{plan.dataset}-{plan.split}-*.tar"))
    existing = plan.stored()
    if existing != plan.plan and (existing is not None or stale_shards) and not overwrite:
        raise PlanMismatchError(
            f"{folder} holds shards made from other items or settings"
            f" ({plan_difference(existing, plan.plan)}); pass --overwrite to rebuild this split,"
            " or choose another --out"
        )
    if existing != plan.plan or overwrite:
        if part.whole:
            remove = [*stale_shards, *plan.progress_dir.glob("*.json")]
        else:  # other parts may be at work: only this part's chunks and shards no chunk owns any more
            remove = [folder / names[c] for c in mine] + [
                plan.progress_dir / f"{names[c]}.json" for c in mine
            ]
            owned = set(names)
            remove += [p for p in stale_shards if p.name not in owned]
        for path in remove:
            path.unlink(missing_ok=True)
        for name in ("index.json", "report.json"):
            (folder / name).unlink(missing_ok=True)
    plan.progress_dir.mkdir(exist_ok=True)
    if part.whole:
        leftovers = [*folder.glob(f"*{TMP_SUFFIX}"), *plan.progress_dir.glob(f"*{TMP_SUFFIX}")]
    else:  # temporary files of other parts may be in use: only this part's own
        leftovers = [
            p for c in mine for d in (folder, plan.progress_dir) for p in d.glob(f"{names[c]}*{TMP_SUFFIX}")
        ]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)  # temporary files of a killed run
    if existing != plan.plan:
        write_atomic(folder / "plan.json", json.dumps(plan.plan, indent=2).encode())


def _make_chunks(
    plan: SplitPlan,
    mine: list[int],
    todo: list[int],
    records: dict[int, dict[str, Any]],
    maker: Maker,
    part: Part,
    workers: int,
    strict: bool,
    max_errors: int,
    progress: bool,
) -> Counter:
    """Make the ``todo`` chunks with a progress bar over this part's items, adding their records to
    ``records``; returns the makers' counters summed. Ctrl-C says what was kept, then re-raises."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the pool forks
    bar = tqdm(
        total=sum(len(plan.chunks[c]) for c in mine),
        initial=sum(len(plan.chunks[c]) for c in records),
        desc=f"{plan.dataset}/{plan.split}" + ("" if part.whole else f" part {part}"),
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

    jobs = {
        c: (
            maker,
            plan.chunks[c],
            str(plan.folder / plan.names[c]),
            str(plan.progress_dir / f"{plan.names[c]}.json"),
            strict,
            max_errors,
            plan.plan_id,
            str(part),
        )
        for c in todo
    }
    try:
        run_chunks(jobs, workers, bar, finished)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\ninterrupted: {len(records)} of {len(mine)} shards of {plan.dataset}/{plan.split}"
            + ("" if part.whole else f" part {part}")
            + " are finished and kept; run the same command again to continue",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    num_errors = sum(records[c].get("errors", 0) for c in records)
    if num_errors:
        print(
            f"warning: {plan.dataset}/{plan.split}: {num_errors} videos failed with unexpected errors (see "
            "report.json); a rerun of the same command retries their shards",
            file=sys.stderr,
        )
    return made


def _conclude(
    plan: SplitPlan,
    part: Part,
    records: dict[int, dict[str, Any]],
    reused: int,
    written: int,
    stats: dict[str, Any],
) -> SplitResult:
    """Write the index when every chunk of the split is done; a part that finds chunks of other parts
    unfinished says which instead (the last part to finish writes the index)."""
    if not part.whole:
        others = [c for c in range(len(plan.chunks)) if not part.owns(c)]
        missing = [plan.names[c] for c in others if plan.record(c) is None]
        if missing:
            return _result(
                plan.folder, plan.split, records, {}, part, reused, written, missing=missing, **stats
            )
    all_records, index = plan.finalize()
    return _result(plan.folder, plan.split, all_records, index, part, reused, written, **stats)


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


def default_workers() -> int:
    """Processes to use by default: the CPUs this process may run on, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, min(8, os.cpu_count() or 1))
