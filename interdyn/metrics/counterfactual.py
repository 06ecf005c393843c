"""The counterfactual report: does a model make different outcomes for different driver motions?

Each group of clips that share their first frame and differ only in how the driver moves is scored
by :func:`~interdyn.metrics.counterfactual_group.group_metrics` (the metrics are defined there:
``self_error``, ``cross_error``, ``discrimination``, ``accuracy``, ``spread_ratio``,
``pairwise_accuracy``, ``motion_ratio``...). Over all groups, :func:`counterfactual_report` adds:

- the pairs of all groups binned by their *separation* ``d(R_i, R_j)``, how far apart the two true
  outcomes are (``by_separation``: equal-count bins from the closest outcomes to the farthest), so the
  report can say which two-way questions a model gets right;
- how many wrong answers chose the *stiller* truth (``errors_toward_stiller``): a model whose samples
  move too little, or lose the objects that move, ends nearest the outcome that moves least.

Groups with fewer than two members (or an empty combined region) are skipped and listed. Overall
values are means over the compared groups (each counterfactual question counts once);
the overall ``spread_ratio`` and ``motion_ratio`` are ratios of the overall means.
:func:`report_to_markdown` writes it as a table.

The same questions asked of the objects rather than the pixels are
:mod:`interdyn.metrics.counterfactual_objects` (:func:`object_report`, written by
:func:`object_report_to_markdown`). Every public name of the three modules is importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interdyn.metrics.counterfactual_group import (
    METRICS,
    REGION_MODES,
    CounterfactualMember,
    Distance,
    group_members,
    group_metrics,
    masked_mse,
    mean_or_nan,
    score_group,
)
from interdyn.metrics.counterfactual_objects import ObjectMember, group_object_members, object_report

__all__ = [
    "METRICS",
    "REGION_MODES",
    "CounterfactualMember",
    "Distance",
    "ObjectMember",
    "counterfactual_report",
    "errors_toward_stiller",
    "group_members",
    "group_metrics",
    "group_object_members",
    "masked_mse",
    "object_report",
    "object_report_to_markdown",
    "report_to_markdown",
    "separation_bins",
]


def errors_toward_stiller(pairs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Of the wrongly answered pairs (``correct == 0``), how many chose the truth that moves less:
    ``{"wrong": n, "toward_stiller": k, "share": k / n}`` (share NaN without wrong pairs)."""
    wrong = [p for p in pairs if p["correct"] == 0]
    stiller = sum(p["other_motion"] < p["motion"] for p in wrong)
    return {
        "wrong": float(len(wrong)),
        "toward_stiller": float(stiller),
        "share": stiller / len(wrong) if wrong else math.nan,
    }


def separation_bins(pairs: Sequence[Mapping[str, Any]], bins: int = 3) -> list[dict[str, float]]:
    """Pairwise accuracy by how far apart the two true outcomes are.

    ``pairs`` (as in :func:`counterfactual_report`'s ``"pairs"``) are sorted by ``separation`` and cut
    into ``bins`` bins of (nearly) equal count, closest outcomes first; pairs without a score are left
    out. Each bin: ``separation_from``, ``separation_to`` (its smallest and largest separation),
    ``pairs`` and ``accuracy``. Fewer pairs than bins give one bin per pair."""
    scored = sorted(
        (p for p in pairs if not math.isnan(p["correct"]) and not math.isnan(p["separation"])),
        key=lambda p: p["separation"],
    )
    out: list[dict[str, float]] = []
    if not scored:
        return out
    for part in np.array_split(np.arange(len(scored)), min(bins, len(scored))):
        chosen = [scored[k] for k in part]
        out.append(
            {
                "separation_from": chosen[0]["separation"],
                "separation_to": chosen[-1]["separation"],
                "pairs": float(len(chosen)),
                "accuracy": mean_or_nan([p["correct"] for p in chosen]),
            }
        )
    return out


def counterfactual_report(
    groups: Mapping[str, Sequence[CounterfactualMember]],
    distance: Distance = masked_mse,
    region_mode: str = "intersection",
) -> dict[str, Any]:
    """Score every group and summarise them.

    Args:
        groups: group name -> its members (clips sharing the first frame, different driver motions).
        distance: ``(video, video, region or None) -> float`` on ``(T, 3, H, W)`` videos; :func:`masked_mse`
            by default.
        region_mode: how members' regions combine into the group's: ``"intersection"`` or ``"union"``.

    Returns:
        ``{"groups": {name: metrics}, "overall": {"groups", "members", *metrics}, "skipped": {name: reason},
        "num_skipped": int, "pairs": [...], "by_separation": [...], "errors_toward_stiller": {...}}``;
        metric names are :data:`METRICS`.
        Overall metrics are means over the compared groups, except ``spread_ratio`` (overall spread /
        overall ground-truth spread) and ``motion_ratio`` (likewise). ``pairs`` holds every ordered
        pair of every compared group (``group``, ``member``, ``other``, ``self``, ``cross``,
        ``separation``, ``correct``, ``motion``, ``other_motion``);
        ``by_separation`` is :func:`separation_bins` of them, ``errors_toward_stiller`` is
        :func:`errors_toward_stiller` of them.
    """
    rows: dict[str, dict[str, float]] = {}
    pairs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name, members in groups.items():
        if len(members) < 2:
            skipped[name] = f"{len(members)} member{'s' if len(members) != 1 else ''}: nothing to compare"
            continue
        row, group_pairs = score_group(members, distance, region_mode)
        if math.isnan(row["self_error"]):
            skipped[name] = "empty region"
            continue
        rows[name] = row
        pairs += [{"group": name, **p} for p in group_pairs]
    overall: dict[str, float] = {
        "groups": float(len(rows)),
        "members": float(sum(r["members"] for r in rows.values())),
    }
    for metric in METRICS:
        values = [r[metric] for r in rows.values() if not math.isnan(r[metric])]
        overall[metric] = mean_or_nan(values)
    overall["spread_ratio"] = (
        overall["spread"] / overall["gt_spread"] if overall["gt_spread"] > 0 else math.nan
    )
    overall["motion_ratio"] = (
        overall["motion"] / overall["gt_motion"] if overall["gt_motion"] > 0 else math.nan
    )
    return {
        "groups": rows,
        "overall": overall,
        "skipped": skipped,
        "num_skipped": len(skipped),
        "pairs": pairs,
        "by_separation": separation_bins(pairs),
        "errors_toward_stiller": errors_toward_stiller(pairs),
    }


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}g}"


def report_to_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of :func:`counterfactual_report`'s result: one row per group and an overall row,
    then the number of skipped groups, the pairwise accuracy by separation and the direction of the
    mistakes."""
    header = "| group | members | self | cross | discrimination | accuracy | spread ratio |"
    lines = [header, "|---" * 7 + "|"]

    def row(name: str, r: Mapping[str, float]) -> str:
        return (
            f"| {name} | {int(r['members'])} | {_fmt(r['self_error'])} | {_fmt(r['cross_error'])} | "
            f"{_fmt(r['discrimination'])} | {_fmt(r['accuracy'], 3)} | {_fmt(r['spread_ratio'], 3)} |"
        )

    lines += [row(name, r) for name, r in report["groups"].items()]
    lines.append(row(f"**overall** ({int(report['overall']['groups'])} groups)", report["overall"]))
    if report["num_skipped"]:
        reasons = ", ".join(f"{name} ({why})" for name, why in report["skipped"].items())
        lines.append(f"\nSkipped {report['num_skipped']} group(s): {reasons}.")
    bins = report.get("by_separation") or []
    if bins:
        overall = report["overall"].get("pairwise_accuracy", math.nan)
        lines += [
            "",
            f"Pairwise accuracy {_fmt(overall, 3)} (chance 0.5): is a sample nearer its own path's truth than "
            "another path's? By how far apart the two truths are (separation, the same distance):",
            "",
            "| separation | pairs | pairwise accuracy |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_fmt(b['separation_from'])} - {_fmt(b['separation_to'])} | {int(b['pairs'])} | "
            f"{_fmt(b['accuracy'], 3)} |"
            for b in bins
        ]
    toward = report.get("errors_toward_stiller")
    if toward and toward["wrong"]:
        lines += [
            "",
            f"Of the {int(toward['wrong'])} wrong answers, {int(toward['toward_stiller'])} chose the truth that moves "
            "less (a model whose samples move too little, or lose what moves, ends nearest the stillest "
            f"outcome). The samples move {_fmt(report['overall'].get('motion_ratio', math.nan), 3)}x as much as "
            "their truths (motion ratio).",
        ]
    return "\n".join(lines) + "\n"


def object_report_to_markdown(report: Mapping[str, Any], what: str = "objects") -> str:
    """:func:`object_report`'s overall result as a short paragraph."""
    o = report["overall"]
    text = (
        f"On the {what} (where they are found in each sample against where each path puts them): accuracy "
        f"{_fmt(o['accuracy'], 3)} (chance {_fmt(o['chance'], 3)}), pairwise accuracy "
        f"{_fmt(o['pairwise_accuracy'], 3)} (chance 0.5), over {int(o['members'])} clips in "
        f"{int(o['groups'])} group(s)"
    )
    if o["members_without_objects"]:
        text += f"; {int(o['members_without_objects'])} clip(s) show none of their {what} (counted wrong)"
    return text + ".\n"
