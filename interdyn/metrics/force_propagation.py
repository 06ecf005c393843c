"""Force propagation: are objects hit *directly* by the driver generated better than those hit only
*indirectly* (through other objects)?

:func:`role_rows` scores one clip's samples per role (``direct``, ``indirect`` and ``all``): errors
inside the role's object masks (dilated, without the driver, frames ``1..T-1``) and, on the built-in
dataset, the physics error of the role's discs; :func:`role_table` averages the rows of all clips;
:func:`force_propagation_markdown` writes the table. The sampling happens in
:class:`~interdyn.callbacks.ForcePropagation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from interdyn.metrics.physics import physics_error
from interdyn.metrics.regions import region_errors, role_region
from interdyn.metrics.report import format_value, nanmean, protocol_line
from interdyn.utils.render import to_uint8

REGION_METRICS = ("psnr", "mse", "mae")
ROLES = ("direct", "indirect", "all")


def role_rows(
    key: str,
    samples: torch.Tensor,
    real: torch.Tensor,
    driver: torch.Tensor,
    roles: tuple[list[str], list[str]],
    meta: dict[str, Any],
    objects: torch.Tensor | None,
    names: Sequence[str] | None,
    metrics_region: Sequence[str] = ("psnr", "mse"),
    dilation: int = 2,
    source_indices: list[int] | None = None,
    geometry: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Rows per sample and role of one clip.

    Args:
        samples: ``(N, T, 3, H, W)`` in [0, 1]; ``real`` ``(T, 3, H, W)`` in [0, 1]; ``driver`` bool
            ``(T, H, W)``.
        roles: the names of the objects hit directly and indirectly (``hit_roles``).
        objects, names: bool ``(K, T, H, W)`` per-object masks and their names (None: no region errors).
        metrics_region: which of :data:`REGION_METRICS` each row gets (as ``region_<metric>``).
        dilation: pixels added around the objects' masks.
        source_indices, geometry: the clip's frame selection and resize/crop; with both given the rows
            also get the physics error of the role's discs (``meta["physics"]``).
    """
    direct, indirect = roles
    members = {"direct": direct, "indirect": indirect, "all": direct + indirect}
    with_physics = source_indices is not None and geometry is not None
    disc_names = list(meta.get("objects", [])) if with_physics else []
    names = [str(n) for n in names] if names is not None else []
    regions = {}
    for role, role_names in members.items():
        if objects is not None and role_names:
            regions[role] = role_region(objects, names, role_names, dilation, driver)
    rows = []
    for n, fake in enumerate(samples):
        fake_u8 = to_uint8(fake.permute(0, 2, 3, 1)).cpu().numpy() if with_physics else None
        for role, role_names in members.items():
            if not role_names:
                continue
            row: dict[str, Any] = {"key": key, "sample": n, "role": role, "objects": len(role_names)}
            region, masked = regions.get(role, (None, 0))
            if region is not None:
                errors = region_errors(fake, real, region)
                row.update({"masked_objects": masked, "region_pixels": errors["pixels"]})
                row.update({f"region_{m}": errors[m] for m in metrics_region})
            if with_physics:
                discs = [disc_names.index(name) for name in role_names if name in disc_names]
                result = physics_error(fake_u8, meta, source_indices, geometry, discs=discs)
                row["physics_position_error"], row["physics_found"] = (
                    result["position_error"],
                    result["found"],
                )
            rows.append(row)
    return rows


def role_table(rows: Sequence[dict[str, Any]], metrics_region: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per role: clips and objects (counted on sample 0), the region metrics and physics error averaged
    over clips and samples (NaN-aware), and the clips whose region had pixels."""
    table = {}
    for role in ROLES:
        mine = [r for r in rows if r["role"] == role]
        first = {r["key"]: r["objects"] for r in mine if r["sample"] == 0}
        entry: dict[str, Any] = {"clips": len(first), "objects": sum(first.values())}
        for m in metrics_region:
            entry[f"region_{m}"] = nanmean([r.get(f"region_{m}", math.nan) for r in mine])
        entry["region_clips"] = len({r["key"] for r in mine if r.get("region_pixels", 0) > 0})
        entry["physics_position_error"] = nanmean([r.get("physics_position_error", math.nan) for r in mine])
        entry["physics_found"] = nanmean([r.get("physics_found", math.nan) for r in mine])
        table[role] = entry
    return table


def force_propagation_markdown(
    table: dict[str, dict[str, Any]],
    counts: dict[str, int],
    protocol: dict[str, Any],
    metrics_region: Sequence[str],
) -> str:
    """The direct / indirect / all table, then the clip counts and the protocol."""
    titles = {"psnr": "region PSNR", "mse": "region MSE", "mae": "region MAE"}
    lines = [
        "| role | clips | objects | "
        + " | ".join(titles[m] for m in metrics_region)
        + " | physics error (px) | found |",
        "|---|---|---|" + "---|" * (len(metrics_region) + 2),
    ]
    for role, entry in table.items():
        values = " | ".join(format_value(entry[f"region_{m}"]) for m in metrics_region)
        lines.append(
            f"| {role} | {entry['clips']} | {entry['objects']} | {values} | "
            f"{format_value(entry['physics_position_error'])} | {format_value(entry['physics_found'])} |"
        )
    lines += [
        "",
        f"Clips: {counts['clips']} seen, {counts['with_hits']} with hit objects "
        f"({counts['with_indirect']} with indirect hits), {counts['no_roles']} without, "
        f"{counts['no_object_masks']} scored without object masks (physics only), "
        f"{counts['unscored']} with neither object masks nor physics (not sampled).",
        "Regions: each role's object masks per frame, dilated, minus the driver; errors pooled over "
        "frames 1..T-1.",
        protocol_line(protocol),
    ]
    return "\n".join(lines) + "\n"
