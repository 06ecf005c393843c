"""The plan of one split's build (see :mod:`data_prep.build`): the items cut into chunks, one shard name
per chunk, and ``plan.json`` (the items' digest and the settings); the chunks' progress records in
``_progress/``; ``index.json`` and ``report.json`` written from those records alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.chunk import Item
from interdyn.data.shard_format import shard_name
from interdyn.utils.files import write_atomic

PROGRESS_DIR = "_progress"


class PlanMismatchError(RuntimeError):
    """The split folder holds shards made from other items or settings."""


class MissingChunksError(RuntimeError):
    """The index was asked for while chunks of the plan are not finished (or no part has run yet)."""


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


@dataclass
class SplitPlan:
    """One split's plan: where it goes, its chunks of items and their shard names, and the plan
    (``plan.json``: the items' digest and the settings) with its short id."""

    dataset: str
    split: str
    folder: Path
    chunks: list[Sequence[Item]]
    names: list[str]
    plan: dict[str, Any]
    plan_id: str
    provenance: dict[str, Any] | None = None

    @classmethod
    def make(
        cls,
        out: Path | str,
        dataset: str,
        split: str,
        items: Sequence[Item],
        shard_size: int,
        settings: dict[str, Any] | None,
        provenance: dict[str, Any] | None = None,
    ) -> SplitPlan:
        """The plan of ``items`` cut into chunks of ``shard_size``; the ids must be unique."""
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        ids = [i.id for i in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{split}: item ids are not unique")
        plan = _plan(dataset, split, items, shard_size, settings or {})
        chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
        return cls(
            dataset=dataset,
            split=split,
            folder=Path(out) / split,
            chunks=chunks,
            names=[shard_name(dataset, split, c) for c in range(len(chunks))],
            plan=plan,
            plan_id=hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16],
            provenance=provenance,
        )

    @property
    def progress_dir(self) -> Path:
        return self.folder / PROGRESS_DIR

    def stored(self) -> dict[str, Any] | None:
        """The ``plan.json`` in the folder, if any."""
        path = self.folder / "plan.json"
        return json.loads(path.read_text()) if path.exists() else None

    def record(self, c: int) -> dict[str, Any] | None:
        """Chunk ``c``'s progress record if its shard is finished for this plan, else None."""
        return read_record(self.folder, self.names[c], self.plan_id)

    def finalize(self) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        """Every chunk's record, and the index written from them; :class:`MissingChunksError` if a chunk
        is not finished."""
        records = {c: self.record(c) for c in range(len(self.chunks))}
        missing = [c for c, r in records.items() if r is None]
        if missing:
            raise MissingChunksError(_missing_message(self.dataset, self.split, self.names, missing))
        num_items = sum(len(chunk) for chunk in self.chunks)
        index = _write_index(
            self.folder, self.dataset, self.split, num_items, self.names, records, self.plan, self.provenance
        )
        return records, index  # type: ignore[return-value]


def read_record(folder: Path, name: str, plan_id: str) -> dict[str, Any] | None:
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
    write_atomic(folder / "report.json", json.dumps(report, indent=2).encode())
    index = {
        "dataset": dataset,
        "split": split,
        "num_samples": num_samples,
        "shards": list(names),
        "samples_per_shard": [len(records[c]["keys"]) for c in order],
        "provenance": {**(provenance or {}), "settings": plan["settings"]},
    }
    write_atomic(folder / "index.json", json.dumps(index, indent=2).encode())
    return index


def plan_difference(old: dict | None, new: dict) -> str:
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
