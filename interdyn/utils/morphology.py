"""Binary mask morphology: dilation and erosion of ``(..., H, W)`` masks (torch tensors or numpy
arrays) by a square or a disk, built from shifted ORs of bool tensors (O(log k) passes for the square,
O(k) for the disk). Pixels outside the image never count: dilation does not wrap, and erosion does not
eat a mask from the image border.

Shared by the mask perturbations of :mod:`interdyn.data.perturb` and the region metrics of
:mod:`interdyn.metrics.regions`.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

MasksT = TypeVar("MasksT", torch.Tensor, np.ndarray)
FOOTPRINTS = ("square", "disk")


def as_bool(masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
    """A bool tensor view of ``masks`` (bool, integer non-zero, or float > 0.5) and whether it was numpy."""
    was_numpy = isinstance(masks, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(masks)) if was_numpy else masks
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor or numpy array, got {type(masks).__name__}")
    if t.ndim < 2:
        raise ValueError(f"masks must be (..., H, W), got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        t = t > 0.5 if t.is_floating_point() else t != 0
    return t, was_numpy


def like_input(out: torch.Tensor, was_numpy: bool) -> torch.Tensor | np.ndarray:
    """``out`` back as a numpy array when the input was one (see :func:`as_bool`)."""
    return out.numpy() if was_numpy else out


def check_pixels(k: float, kind: str) -> int:
    """A non-negative integer severity (``2`` or ``2.0``; not ``2.5``)."""
    if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
        raise ValueError(f"{kind} severity must be a number, got {k!r}")
    if not math.isfinite(k) or k < 0 or k != int(k):
        raise ValueError(f"{kind} severity must be a non-negative integer (pixels or frames), got {k!r}")
    return int(k)


def _shift(x: torch.Tensor, s: int, dim: int) -> torch.Tensor:
    """``out[i] = x[i - s]`` along ``dim``, with False shifted in (outside the image is background)."""
    n = x.shape[dim]
    out = torch.zeros_like(x)
    if abs(s) < n:
        if s >= 0:
            out.narrow(dim, s, n - s).copy_(x.narrow(dim, 0, n - s))
        else:
            out.narrow(dim, 0, n + s).copy_(x.narrow(dim, -s, n + s))
    return out


def _dilate_line(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """``out[i] = any(x[i - r .. i + r])`` along ``dim``, in O(log r) shifted ORs."""
    if r == 0:
        return x
    size = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = r
    # y[j] will be any(x_padded[j .. j + length - 1]) = any(x[j - r .. j + r]): pad r in front
    y = torch.cat([x.new_zeros(pad_shape), x], dim)
    length, n = 2 * r + 1, 1
    while 2 * n <= length:  # y[j] = any(x_padded[j .. j + n - 1]), doubling n
        y = y | _shift(y, -n, dim)
        n *= 2
    if n < length:  # two overlapping windows of n cover [j, j + length - 1]
        y = y | _shift(y, n - length, dim)
    return y.narrow(dim, 0, size)


def _grow(masks: torch.Tensor, k: int, footprint: str) -> torch.Tensor:
    """Binary dilation of bool ``(..., H, W)`` masks; pixels outside the image are background."""
    if footprint == "square":  # the square is separable: a row segment, then a column segment
        return _dilate_line(_dilate_line(masks, k, -1), k, -2)
    if footprint == "disk":
        # the disk is the union over rows dy of row segments of half-width floor(sqrt(k^2 - dy^2))
        rows: dict[int, torch.Tensor] = {}
        out = torch.zeros_like(masks)
        for dy in range(-k, k + 1):
            half = math.isqrt(k * k - dy * dy)
            if half not in rows:
                rows[half] = _dilate_line(masks, half, -1)
            out |= _shift(rows[half], dy, -2)
        return out
    raise ValueError(f"footprint must be one of {FOOTPRINTS}, got {footprint!r}")


def dilate(masks: MasksT, k: float, footprint: str = "square") -> MasksT:
    """Grow every mask of ``(..., H, W)`` by ``k`` pixels: a pixel becomes set when a set pixel lies within
    Chebyshev distance ``k`` (``footprint="square"``, a ``(2k+1)^2`` square) or Euclidean distance ``k``
    (``"disk"``). ``k = 0`` returns ``masks`` as given."""
    k = check_pixels(k, "dilate")
    if k == 0:
        return masks
    t, was_numpy = as_bool(masks)
    return like_input(_grow(t, k, footprint), was_numpy)


def erode(masks: MasksT, k: float, footprint: str = "square") -> MasksT:
    """Shrink every mask of ``(..., H, W)`` by ``k`` pixels (the dual of :func:`dilate`: a pixel stays set
    only when no unset pixel of the image lies within distance ``k``; the image border does not erode).
    A mask thinner than ``2k + 1`` pixels disappears. ``k = 0`` returns ``masks`` as given."""
    k = check_pixels(k, "erode")
    if k == 0:
        return masks
    t, was_numpy = as_bool(masks)
    return like_input(~_grow(~t, k, footprint), was_numpy)
