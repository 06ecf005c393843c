"""The counterfactual test on objects rather than pixels, where a clip knows where its objects should be
(the built-in world's simulation): :func:`object_report` ranks the members' simulated object trajectories
by their distance to where each sample's objects are found
(:func:`~interdyn.metrics.physics.trajectory_distance`). It measures the reaction alone, whatever the
samples' blur or colour cast. Groups are formed as the pixel report's
(:mod:`interdyn.metrics.counterfactual_group`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np

from interdyn.metrics.counterfactual_group import mean_or_nan, member_order, nearest_credit
from interdyn.metrics.physics import trajectory_distance


@dataclass
class ObjectMember:
    """One member of a counterfactual group, scored on where its objects are rather than on its pixels.

    Args:
        key: the clip key.
        found: ``(N, T, K, 2)`` samples or ``(T, K, 2)`` for one: where each of the scene's ``K`` objects
            is found in the sample, NaN where it is not.
        expected: ``(T, K, 2)``: where the objects truly are for this member's driver motion.
    """

    key: str
    found: np.ndarray
    expected: np.ndarray


def _object_group(members: Sequence[ObjectMember]) -> tuple[dict[str, float], int]:
    """A group's ``accuracy``, ``pairwise_accuracy``, ``chance`` and ``members``, and how many members
    had no object found in any sample (each scores 0, as a wrong answer)."""
    found = [np.asarray(m.found, dtype=np.float64) for m in members]
    found = [f[None] if f.ndim == 3 else f for f in found]
    expected = [np.asarray(m.expected, dtype=np.float64) for m in members]
    shapes = {e.shape for e in expected} | {f.shape[1:] for f in found}
    if len(shapes) > 1:
        raise ValueError(f"the members' object positions differ in shape: {sorted(shapes)}")
    m = len(members)
    d = []  # d[i][j]: mean over i's samples (those showing an object) of the distance to j's outcome
    for i in range(m):
        row = []
        for j in range(m):
            per_sample = [trajectory_distance(s, expected[j]) for s in found[i]]
            shown = [v for v in per_sample if not math.isnan(v)]
            row.append(float(np.mean(shown)) if shown else math.nan)
        d.append(row)
    blind = [i for i in range(m) if all(math.isnan(v) for v in d[i])]
    accuracy = sum(0.0 if i in blind else nearest_credit(d[i], i) for i in range(m)) / m
    pairs = [
        0.0 if i in blind else float(d[i][i] < d[i][j]) + 0.5 * (d[i][i] == d[i][j])
        for i, j in permutations(range(m), 2)
    ]
    row = {
        "members": float(m),
        "accuracy": accuracy,
        "pairwise_accuracy": mean_or_nan(pairs),
        "chance": 1.0 / m,
    }
    return row, len(blind)


def object_report(groups: Mapping[str, Sequence[ObjectMember]]) -> dict[str, Any]:
    """The counterfactual test on objects: is each sample's objects' motion nearest its own member's?

    For every member ``i`` and every member ``j`` of its group, the distance is
    :func:`~interdyn.metrics.physics.trajectory_distance` between where the objects are found in ``i``'s
    samples and where they are in ``j``'s outcome (frames ``1..T-1``, averaged over samples). ``accuracy``
    is the fraction of members whose own outcome is the nearest (ties share the credit) against
    ``chance = 1 / members``; ``pairwise_accuracy`` asks it of every ordered pair (chance 1/2). A member
    whose samples show none of the objects is a wrong answer.

    Returns:
        ``{"groups": {name: row}, "overall": {"groups", "members", "accuracy", "pairwise_accuracy",
        "chance", "members_without_objects"}, "skipped": {name: reason}}``; overall values are means over
        the groups, like :func:`~interdyn.metrics.counterfactual.counterfactual_report`'s.
    """
    rows: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    blind = 0
    for name, members in groups.items():
        if len(members) < 2:
            skipped[name] = f"{len(members)} member{'s' if len(members) != 1 else ''}: nothing to compare"
            continue
        rows[name], group_blind = _object_group(members)
        blind += group_blind
    overall = {
        "groups": float(len(rows)),
        "members": float(sum(r["members"] for r in rows.values())),
        **{
            k: mean_or_nan([r[k] for r in rows.values()]) for k in ("accuracy", "pairwise_accuracy", "chance")
        },
        "members_without_objects": float(blind),
    }
    return {"groups": rows, "overall": overall, "skipped": skipped}


def group_object_members(kept: Iterable[Mapping[str, Any]]) -> dict[str, list[ObjectMember]]:
    """Kept clips (``key``, ``group``, ``variant``, ``found``, ``expected``) -> groups for
    :func:`object_report`, in :func:`~interdyn.metrics.counterfactual_group.group_members`' order."""
    groups: dict[str, list[ObjectMember]] = {}
    for m in sorted(kept, key=member_order):
        groups.setdefault(m["group"], []).append(ObjectMember(m["key"], m["found"], m["expected"]))
    return groups
