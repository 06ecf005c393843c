"""The counterfactual report: does a model make different outcomes for different driver motions?

A *group* is a set of clips that share their first frame and differ only in how the driver moves
(CLEVRER scenes with different entering trajectories, or one SSV2 frame with several hand paths).
For each member ``i`` there are the generated video(s) ``G_i`` and the ground truth ``R_i``. Per group:

- ``self_error``: mean over members of ``d(G_i, R_i)``;
- ``cross_error``: mean over ordered pairs ``i != j`` of ``d(G_i, R_j)``;
- ``discrimination = cross_error - self_error``: above 0 when the outcomes follow their controls;
  exactly 0 for a deterministic model that ignores the control (then ``G_i`` is one video ``G`` and
  both terms equal the mean of ``d(G, R_j)``);
- ``accuracy``: fraction of members whose own ground truth is the nearest of the group's (ties share
  the credit), against ``chance = 1 / members``;
- ``spread`` (mean ``d(G_i, G_j)``, ``i != j``), ``gt_spread`` (mean ``d(R_i, R_j)``) and
  ``spread_ratio = spread / gt_spread``: how different the outcomes are, relative to how different
  they should be; ``sample_spread``: mean ``d`` between two samples of the same member (the noise
  floor of ``spread``; NaN with one sample);
- ``pairwise_accuracy``: over ordered pairs ``i != j``, the fraction with ``d(G_i, R_i) < d(G_i, R_j)``
  (ties count half), against a chance of 1/2. Every pair is one two-way question ("is this sample path
  i's outcome or path j's?"), so the report can also say which questions a model gets right: the pairs
  of all groups are binned by their *separation* ``d(R_i, R_j)``, how far apart the two true outcomes
  are (``by_separation``: equal-count bins from the closest outcomes to the farthest);
- ``motion`` (mean over the members' samples) and ``gt_motion`` (over their truths): ``d(V, V_0)``, a
  video against its own first frame held still, i.e. how much the outcome moves (on the region's
  pixels that are in the region on frame 0 too, so that a driver leaving its start is not motion);
  ``motion_ratio`` is their ratio. Each pair records both truths' motion, so the report can say how
  many wrong answers chose the *stiller* truth (``errors_toward_stiller``): a model whose samples move
  too little, or lose the objects that move, ends nearest the outcome that moves least.

``d`` is :func:`masked_mse` by default: per-pixel mean squared error over frames ``1..T-1`` (frame 0
is shared), optionally inside a region. With several samples per member, ``d`` is averaged over
samples (and over sample pairs for ``spread``). Every member may carry a ``region`` ``(T, H, W)``; a
group's distances are all measured on one region combined from its members' (``intersection`` by
default, e.g. for "outside every driver"; ``union`` e.g. for "wherever some pushed object is"), so
that the distances compared with each other cover the same pixels. A member without a region covers
the whole frame.

The same questions can be asked of the objects rather than the pixels, where a clip knows where its
objects should be (the built-in world's simulation): :func:`object_report` ranks the members' simulated
object trajectories by their distance to where each sample's objects are found
(:func:`~interdyn.metrics.physics.trajectory_distance`). It measures the reaction alone, whatever the
samples' blur or colour cast.

Groups with fewer than two members (or an empty combined region) are skipped and listed. Overall
values are means over the compared groups (each counterfactual question counts once);
the overall ``spread_ratio`` and ``motion_ratio`` are ratios of the overall means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np
import torch

from interdyn.metrics.physics import trajectory_distance

Distance = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], float]
METRICS = (
    "self_error",
    "cross_error",
    "discrimination",
    "accuracy",
    "chance",
    "spread",
    "gt_spread",
    "spread_ratio",
    "sample_spread",
    "pairwise_accuracy",
    "motion",
    "gt_motion",
    "motion_ratio",
)
REGION_MODES = ("intersection", "union")


def masked_mse(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor | None = None) -> float:
    """Mean squared error between videos ``(T, 3, H, W)`` over frames ``1..T-1`` (frame 0 is the shared
    conditioning frame), channels and the pixels where ``region`` ``(T, H, W)`` is set (all without one).
    NaN when the region is empty on those frames."""
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    per_pixel = (a[1:].float() - b[1:].float()).pow(2).mean(1)  # (T-1, H, W)
    if region is None:
        return float(per_pixel.mean(dtype=torch.float64))
    inside = region[1:].to(device=per_pixel.device, dtype=torch.bool)
    if not inside.any():
        return math.nan
    return float(per_pixel[inside].mean(dtype=torch.float64))


@dataclass
class CounterfactualMember:
    """One member of a counterfactual group.

    Args:
        key: the clip key.
        generated: ``(N, T, 3, H, W)`` samples or one ``(T, 3, H, W)`` video, float in ``[0, 1]``
            (uint8 is divided by 255).
        ground_truth: ``(T, 3, H, W)``, same range rules.
        region: optional bool ``(T, H, W)`` (or ``(H, W)``, used for every frame) where distances are
            measured.
    """

    key: str
    generated: torch.Tensor | np.ndarray
    ground_truth: torch.Tensor | np.ndarray
    region: torch.Tensor | np.ndarray | None = None


def _video(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.ndim != 5 or t.shape[2] != 3:
        raise ValueError(f"{what} must be (T, 3, H, W) or (N, T, 3, H, W), got shape {tuple(t.shape)}")
    return t


def _prepare(member: CounterfactualMember) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Samples ``(N, T, 3, H, W)``, ground truth ``(T, 3, H, W)`` and region ``(T, H, W)`` bool or None."""
    gen = member.generated
    gen = _video(gen[None] if np.ndim(gen) == 4 else gen, f"{member.key}: generated")
    gt = _video(member.ground_truth[None], f"{member.key}: ground_truth")[0]
    if gen.shape[1:] != gt.shape:
        raise ValueError(
            f"{member.key}: generated {tuple(gen.shape[1:])} and ground truth {tuple(gt.shape)} differ in shape"
        )
    region = member.region
    if region is not None:
        region = torch.as_tensor(np.asarray(region)) if isinstance(region, np.ndarray) else region
        region = region.bool()
        if region.ndim == 2:
            region = region.expand(gt.shape[0], -1, -1)
        if region.shape != (gt.shape[0], *gt.shape[-2:]):
            expected = (gt.shape[0], *gt.shape[-2:])
            raise ValueError(
                f"{member.key}: region must be (T, H, W) = {expected}, got {tuple(region.shape)}"
            )
    return gen, gt, region


def _combine(regions: Sequence[torch.Tensor | None], mode: str) -> torch.Tensor | None:
    given = [r for r in regions if r is not None]
    if not given:
        return None
    if mode == "union" and len(given) < len(regions):
        return None  # a member without a region covers the whole frame
    out = given[0].clone()
    for r in given[1:]:
        out = out & r if mode == "intersection" else out | r
    return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _score_group(
    members: Sequence[CounterfactualMember], distance: Distance, region_mode: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A group's metrics and its ordered pairs (``member``, ``other``, ``self``, ``cross``,
    ``separation``, ``correct``, and both truths' motion: ``motion``, ``other_motion``)."""
    if len(members) < 2:
        raise ValueError("a counterfactual group needs at least two members")
    if region_mode not in REGION_MODES:
        raise ValueError(f"region_mode must be one of {REGION_MODES}, got {region_mode!r}")
    prepared = [_prepare(m) for m in members]
    shapes = {tuple(gt.shape) for _, gt, _ in prepared}
    if len(shapes) > 1:
        raise ValueError(f"the members of a group differ in video shape: {sorted(shapes)}")
    region = _combine([r for _, _, r in prepared], region_mode)
    gens = [g for g, _, _ in prepared]
    gts = [gt for _, gt, _ in prepared]
    m = len(members)

    # d[i][j] = mean over the samples of G_i of d(sample, R_j)
    d = [[_mean([distance(s, gts[j], region) for s in gens[i]]) for j in range(m)] for i in range(m)]
    # separation[i][j] = d(R_i, R_j): how far apart the two true outcomes are
    separation = [[distance(gts[i], gts[j], region) if i != j else 0.0 for j in range(m)] for i in range(m)]
    # motion is measured where the region holds on frame 0 too: a driver leaving its start is not motion
    still_region = None if region is None else region & region[:1]
    truth_motion = [distance(gt, _still(gt), still_region) for gt in gts]
    sample_motion = [_mean([distance(s, _still(s), still_region) for s in g]) for g in gens]
    self_error = _mean([d[i][i] for i in range(m)])
    cross_error = _mean([d[i][j] for i, j in permutations(range(m), 2)])
    accuracy = 0.0
    for i in range(m):
        if any(math.isnan(v) for v in d[i]):  # e.g. an empty region
            accuracy = math.nan
            break
        accuracy += _nearest_credit(d[i], i)
    pairs = []
    for i, j in permutations(range(m), 2):
        own, other = d[i][i], d[i][j]
        correct = (
            math.nan if math.isnan(own) or math.isnan(other) else float(own < other) + 0.5 * (own == other)
        )
        pairs.append(
            {
                "member": members[i].key,
                "other": members[j].key,
                "self": own,
                "cross": other,
                "separation": separation[i][j],
                "correct": correct,
                "motion": truth_motion[i],
                "other_motion": truth_motion[j],
            }
        )
    spread = _mean(
        [
            _mean([distance(a, b, region) for a in gens[i] for b in gens[j]])
            for i, j in permutations(range(m), 2)
        ]
    )
    gt_spread = _mean([separation[i][j] for i, j in permutations(range(m), 2)])
    within = [distance(g[p], g[q], region) for g in gens for p, q in permutations(range(len(g)), 2)]
    row = {
        "members": float(m),
        "self_error": self_error,
        "cross_error": cross_error,
        "discrimination": cross_error - self_error,
        "accuracy": accuracy / m,
        "chance": 1.0 / m,
        "spread": spread,
        "gt_spread": gt_spread,
        "spread_ratio": spread / gt_spread if gt_spread > 0 else math.nan,
        "sample_spread": _mean(within),
        "pairwise_accuracy": _mean([p["correct"] for p in pairs]),
        "motion": _mean(sample_motion),
        "gt_motion": _mean(truth_motion),
        "motion_ratio": _mean(sample_motion) / _mean(truth_motion) if _mean(truth_motion) > 0 else math.nan,
    }
    return row, pairs


def _nearest_credit(row: Sequence[float], own: int) -> float:
    """1 when ``row[own]`` is the smallest of ``row``, ``1 / k`` when it ties with ``k - 1`` others, else 0."""
    nearest = [j for j, v in enumerate(row) if v == min(row)]
    return (own in nearest) / len(nearest)


def _still(video: torch.Tensor) -> torch.Tensor:
    """The video's first frame held for its whole length."""
    return video[:1].expand_as(video)


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


def group_metrics(
    members: Sequence[CounterfactualMember],
    distance: Distance = masked_mse,
    region_mode: str = "intersection",
) -> dict[str, float]:
    """The metrics of one group of at least two members (see the module docstring)."""
    return _score_group(members, distance, region_mode)[0]


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
                "accuracy": _mean([p["correct"] for p in chosen]),
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
        row, group_pairs = _score_group(members, distance, region_mode)
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
        overall[metric] = _mean(values)
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


def _member_order(m: Mapping[str, Any]) -> tuple[str, int, str]:
    """Group, integer variant first, then key: a fixed order whatever the order clips were scored in."""
    variant = m["variant"] if isinstance(m["variant"], int) else 1 << 30
    return m["group"], variant, m["key"]


def group_members(
    kept: Iterable[Mapping[str, Any]], outside_driver: bool = True
) -> dict[str, list[CounterfactualMember]]:
    """Kept clips -> groups for :func:`counterfactual_report`, in a fixed order (group, integer variant
    first, key), whatever the order the clips were scored in.

    Each kept clip is a mapping with ``key``, ``group``, ``variant`` (an int or None), ``generated``,
    ``ground_truth`` and ``driver`` (bool ``(T, H, W)``); with ``outside_driver`` a member's region is the
    complement of its driver (so that a group is compared outside every member's driver)."""

    groups: dict[str, list[CounterfactualMember]] = {}
    for m in sorted(kept, key=_member_order):
        region = ~m["driver"] if outside_driver else None
        groups.setdefault(m["group"], []).append(
            CounterfactualMember(m["key"], m["generated"], m["ground_truth"], region)
        )
    return groups


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
    accuracy = sum(0.0 if i in blind else _nearest_credit(d[i], i) for i in range(m)) / m
    pairs = [
        0.0 if i in blind else float(d[i][i] < d[i][j]) + 0.5 * (d[i][i] == d[i][j])
        for i, j in permutations(range(m), 2)
    ]
    row = {"members": float(m), "accuracy": accuracy, "pairwise_accuracy": _mean(pairs), "chance": 1.0 / m}
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
        the groups, like :func:`counterfactual_report`'s.
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
        **{k: _mean([r[k] for r in rows.values()]) for k in ("accuracy", "pairwise_accuracy", "chance")},
        "members_without_objects": float(blind),
    }
    return {"groups": rows, "overall": overall, "skipped": skipped}


def group_object_members(kept: Iterable[Mapping[str, Any]]) -> dict[str, list[ObjectMember]]:
    """Kept clips (``key``, ``group``, ``variant``, ``found``, ``expected``) -> groups for
    :func:`object_report`, in :func:`group_members`' order."""
    groups: dict[str, list[ObjectMember]] = {}
    for m in sorted(kept, key=_member_order):
        groups.setdefault(m["group"], []).append(ObjectMember(m["key"], m["found"], m["expected"]))
    return groups


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
