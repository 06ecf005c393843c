"""Small pure helpers shared by the experiment reports (mask noise, force propagation, counterfactuals):
strict-JSON values, table number formatting, NaN-aware means and the protocol sentence."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def json_safe(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), numpy / torch scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic | torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_value(value: float | None) -> str:
    """A table cell: ``-`` for None / NaN, 4 decimals below 10, 2 above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def nanmean(values: Sequence[float | None]) -> float:
    """Mean ignoring None and NaN (an infinite PSNR of an exact match stays infinite); NaN when empty."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def protocol_line(protocol: Mapping[str, Any]) -> str:
    """``"Protocol: key: value, ... ."``, the last line of every report."""
    return "Protocol: " + ", ".join(f"{k}: {v}" for k, v in protocol.items()) + "."
