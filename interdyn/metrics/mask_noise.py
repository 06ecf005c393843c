"""The mask-noise sweep's table: one row per perturbation level of the driver masks.

The sampling and scoring happen in :class:`~interdyn.callbacks.MaskNoiseSweep`; this module only turns
the per-level results into rows and the markdown table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from interdyn.metrics.report import format_value, nanmean, protocol_line
from interdyn.metrics.suite import PAPER_COLUMNS

CLEAN = "clean"


def level_label(kind: str, severity: float) -> str:
    """``"clean"`` or ``"<kind>=<severity>"`` (as ``MaskPerturbation.label``)."""
    return CLEAN if kind == CLEAN else f"{kind}={severity:g}"


def changed_pixels(masks: torch.Tensor, noisy: torch.Tensor) -> tuple[float, float]:
    """How much a perturbation changed bool masks ``(T, H, W)``: the fraction of all pixels flipped, and
    the same count divided by the driver's area (at least 1 pixel)."""
    changed = (noisy != masks).sum().item()
    return changed / masks.numel(), changed / max(1, masks.sum().item())


def level_row(
    kind: str, severity: float, changed: Sequence[tuple[float, float]], values: dict[str, Any]
) -> dict[str, Any]:
    """One row of the sweep: the level, the mean changed fractions of its clips (see
    :func:`changed_pixels`) and the metric values (``summarize``'s result)."""
    return {
        "label": level_label(kind, severity),
        "kind": kind,
        "severity": severity,
        "changed_fraction": nanmean([c[0] for c in changed]),
        "changed_vs_mask": nanmean([c[1] for c in changed]),
        **values,
    }


def mask_noise_markdown(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> str:
    """The sweep's table: one row per level (the metrics in the paper's column order), then the protocol."""
    titles = dict(PAPER_COLUMNS)
    columns = [k for k, _ in PAPER_COLUMNS if any(k in r for r in rows)]
    lines = [
        "| perturbation | changed px (frame) | changed px (vs mask) | "
        + " | ".join(titles[k] for k in columns)
        + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for r in rows:
        values = " | ".join(format_value(r.get(k)) for k in columns)
        lines.append(
            f"| {r['label']} | {format_value(r['changed_fraction'])} | "
            f"{format_value(r['changed_vs_mask'])} | {values} |"
        )
    lines += [
        "",
        "Changed px: fraction of the clip's mask pixels (T x H x W) that the perturbation flipped, and the "
        "same divided by the driver's area.",
        protocol_line(protocol),
    ]
    return "\n".join(lines) + "\n"
