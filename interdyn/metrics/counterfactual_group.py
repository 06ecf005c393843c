"""One counterfactual group scored on its pixels: do different driver motions give different outcomes?

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
  i's outcome or path j's?"); each pair also records its *separation* ``d(R_i, R_j)``, how far apart
  the two true outcomes are (the report bins the pairs by it);
- ``motion`` (mean over the members' samples) and ``gt_motion`` (over their truths): ``d(V, V_0)``, a
  video against its own first frame held still, i.e. how much the outcome moves (on the region's
  pixels that are in the region on frame 0 too, so that a driver leaving its start is not motion);
  ``motion_ratio`` is their ratio. Each pair records both truths' motion, so the report can say how
  many wrong answers chose the *stiller* truth.

``d`` is :func:`masked_mse` by default: per-pixel mean squared error over frames ``1..T-1`` (frame 0
is shared), optionally inside a region. With several samples per member, ``d`` is averaged over
samples (and over sample pairs for ``spread``). Every member may carry a ``region`` ``(T, H, W)``; a
group's distances are all measured on one region combined from its members' (``intersection`` by
default, e.g. for "outside every driver"; ``union`` e.g. for "wherever some pushed object is"), so
that the distances compared with each other cover the same pixels. A member without a region covers
the whole frame.

The report over many groups is :mod:`interdyn.metrics.counterfactual`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np
import torch

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


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean of ``values``; NaN when there are none."""
    return float(np.mean(values)) if len(values) else math.nan


def score_group(
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
    d = [[mean_or_nan([distance(s, gts[j], region) for s in gens[i]]) for j in range(m)] for i in range(m)]
    # separation[i][j] = d(R_i, R_j): how far apart the two true outcomes are
    separation = [[distance(gts[i], gts[j], region) if i != j else 0.0 for j in range(m)] for i in range(m)]
    # motion is measured where the region holds on frame 0 too: a driver leaving its start is not motion
    still_region = None if region is None else region & region[:1]
    truth_motion = [distance(gt, _still(gt), still_region) for gt in gts]
    sample_motion = [mean_or_nan([distance(s, _still(s), still_region) for s in g]) for g in gens]
    self_error = mean_or_nan([d[i][i] for i in range(m)])
    cross_error = mean_or_nan([d[i][j] for i, j in permutations(range(m), 2)])
    accuracy = 0.0
    for i in range(m):
        if any(math.isnan(v) for v in d[i]):  # e.g. an empty region
            accuracy = math.nan
            break
        accuracy += nearest_credit(d[i], i)
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
    spread = mean_or_nan(
        [
            mean_or_nan([distance(a, b, region) for a in gens[i] for b in gens[j]])
            for i, j in permutations(range(m), 2)
        ]
    )
    gt_spread = mean_or_nan([separation[i][j] for i, j in permutations(range(m), 2)])
    within = [distance(g[p], g[q], region) for g in gens for p, q in permutations(range(len(g)), 2)]
    motion, gt_motion = mean_or_nan(sample_motion), mean_or_nan(truth_motion)
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
        "sample_spread": mean_or_nan(within),
        "pairwise_accuracy": mean_or_nan([p["correct"] for p in pairs]),
        "motion": motion,
        "gt_motion": gt_motion,
        "motion_ratio": motion / gt_motion if gt_motion > 0 else math.nan,
    }
    return row, pairs


def nearest_credit(row: Sequence[float], own: int) -> float:
    """1 when ``row[own]`` is the smallest of ``row``, ``1 / k`` when it ties with ``k - 1`` others, else 0."""
    nearest = [j for j, v in enumerate(row) if v == min(row)]
    return (own in nearest) / len(nearest)


def _still(video: torch.Tensor) -> torch.Tensor:
    """The video's first frame held for its whole length."""
    return video[:1].expand_as(video)


def group_metrics(
    members: Sequence[CounterfactualMember],
    distance: Distance = masked_mse,
    region_mode: str = "intersection",
) -> dict[str, float]:
    """The metrics of one group of at least two members (see the module docstring)."""
    return score_group(members, distance, region_mode)[0]


def member_order(m: Mapping[str, Any]) -> tuple[str, int, str]:
    """Group, integer variant first, then key: a fixed order whatever the order clips were scored in."""
    variant = m["variant"] if isinstance(m["variant"], int) else 1 << 30
    return m["group"], variant, m["key"]


def group_members(
    kept: Iterable[Mapping[str, Any]], outside_driver: bool = True
) -> dict[str, list[CounterfactualMember]]:
    """Kept clips -> groups for :func:`~interdyn.metrics.counterfactual.counterfactual_report`, in a fixed order (group, integer variant
    first, key), whatever the order the clips were scored in.

    Each kept clip is a mapping with ``key``, ``group``, ``variant`` (an int or None), ``generated``,
    ``ground_truth`` and ``driver`` (bool ``(T, H, W)``); with ``outside_driver`` a member's region is the
    complement of its driver (so that a group is compared outside every member's driver)."""

    groups: dict[str, list[CounterfactualMember]] = {}
    for m in sorted(kept, key=member_order):
        region = ~m["driver"] if outside_driver else None
        groups.setdefault(m["group"], []).append(
            CounterfactualMember(m["key"], m["generated"], m["ground_truth"], region)
        )
    return groups
