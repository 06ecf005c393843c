"""Test-time perturbations of the driver masks, for the mask-noise robustness study.

Each perturbation maps the clip's control masks ``(T, H, W)`` bool to masks of the same shape, with
one severity parameter; severity 0 returns the masks unchanged for every kind:

- ``dilate`` / ``erode``: grow / shrink every mask by ``k`` pixels. The structuring element is a
  square by default (exactly ``k`` pixels in Chebyshev distance); the
  functions also take ``footprint="disk"`` (Euclidean distance <= ``k``); both are built from shifted
  ORs of bool tensors (O(log k) passes for the square, O(k) for the disk). Pixels outside the image
  never count: dilation does not wrap, and erosion does not eat a mask from the image border (a hand
  entering from the edge keeps touching it). An eroded-away mask becomes empty.
- ``drop``: each frame except the first is replaced by an *empty* mask with probability ``p``, as a
  missed SAM2 detection would look.
- ``jitter``: each frame except the first takes the mask of a frame shifted by a random integer in
  ``[-max_shift, max_shift]``, clamped to the clip.
- ``boxify``: each mask is replaced by its filled bounding box (severity 0 or 1: off / on).

The first frame's mask is never dropped or jittered: it belongs to the conditioning image, whose
driver the model sees, so changing it would contradict the image rather than imitate a noisy tracker.

Severities are in the pixels of the masks given, so apply them after the resize and crop (to the
``control`` masks that :class:`interdyn.data.shards.ClipDecoder` returns); the defaults of
:func:`severity_levels` are meant for 256x384 clips. :class:`MaskPerturbation` seeds its randomness
from ``(seed, clip key)``, so a clip gets the same perturbation on every rank and every run.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

MasksT = TypeVar("MasksT", torch.Tensor, np.ndarray)
FOOTPRINTS = ("square", "disk")


def _to_bool(masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
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


def _back(out: torch.Tensor, was_numpy: bool) -> torch.Tensor | np.ndarray:
    return out.numpy() if was_numpy else out


def _rng(rng: random.Random | int | None) -> random.Random:
    if rng is None:
        return random  # type: ignore[return-value]  # the module has the same interface
    if isinstance(rng, random.Random):
        return rng
    return random.Random(int(rng))


def _pixels(k: float, kind: str) -> int:
    """A non-negative integer severity (``2`` or ``2.0``; not ``2.5``)."""
    if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
        raise ValueError(f"{kind} severity must be a number, got {k!r}")
    if not math.isfinite(k) or k < 0 or k != int(k):
        raise ValueError(f"{kind} severity must be a non-negative integer (pixels or frames), got {k!r}")
    return int(k)


def _probability(p: float, kind: str) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float | np.integer | np.floating) or not 0 <= p <= 1:
        raise ValueError(f"{kind} severity must be a probability in [0, 1], got {p!r}")
    return float(p)


def _switch(s: float, kind: str) -> int:
    if isinstance(s, bool) or s not in (0, 1):
        raise ValueError(f"{kind} severity must be 0 (off) or 1 (on), got {s!r}")
    return int(s)


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
    k = _pixels(k, "dilate")
    if k == 0:
        return masks
    t, was_numpy = _to_bool(masks)
    return _back(_grow(t, k, footprint), was_numpy)


def erode(masks: MasksT, k: float, footprint: str = "square") -> MasksT:
    """Shrink every mask of ``(..., H, W)`` by ``k`` pixels (the dual of :func:`dilate`: a pixel stays set
    only when no unset pixel of the image lies within distance ``k``; the image border does not erode).
    A mask thinner than ``2k + 1`` pixels disappears. ``k = 0`` returns ``masks`` as given."""
    k = _pixels(k, "erode")
    if k == 0:
        return masks
    t, was_numpy = _to_bool(masks)
    return _back(~_grow(~t, k, footprint), was_numpy)


def drop_frames(masks: MasksT, p: float, rng: random.Random | int | None = None) -> MasksT:
    """Empty the mask of each frame except the first with probability ``p``. One uniform number is drawn per
    frame whatever ``p``, so with the same ``rng`` state the frames dropped at a lower ``p`` are a subset of
    those dropped at a higher one. ``rng``: a ``random.Random``, a seed, or None (the global generator)."""
    p = _probability(p, "drop")
    if p == 0:
        return masks
    t, was_numpy = _to_bool(masks)
    gen = _rng(rng)
    keep = torch.tensor([True] + [gen.random() >= p for _ in range(t.shape[0] - 1)], device=t.device)
    out = t & keep.reshape(-1, *([1] * (t.ndim - 1)))
    return _back(out, was_numpy)


def jitter_indices(num_frames: int, max_shift: int, rng: random.Random | int | None = None) -> list[int]:
    """Source frame of each output frame for :func:`temporal_jitter`: ``0`` for the first, then
    ``clamp(t + s, 0, T - 1)`` with ``s`` uniform in ``[-max_shift, max_shift]``."""
    gen = _rng(rng)
    return [0] + [
        min(max(t + gen.randint(-max_shift, max_shift), 0), num_frames - 1) for t in range(1, num_frames)
    ]


def temporal_jitter(masks: MasksT, max_shift: float, rng: random.Random | int | None = None) -> MasksT:
    """Replace the mask of each frame except the first by the mask of a frame at most ``max_shift`` frames
    away (uniform integer shift, clamped to the clip; see :func:`jitter_indices`)."""
    max_shift = _pixels(max_shift, "jitter")
    if max_shift == 0:
        return masks
    t, was_numpy = _to_bool(masks)
    return _back(t[jitter_indices(t.shape[0], max_shift, rng)], was_numpy)


def boxify(masks: MasksT, severity: float = 1) -> MasksT:
    """Replace every mask of ``(..., H, W)`` by its filled bounding box (empty masks stay empty);
    ``severity`` 0 returns ``masks`` as given."""
    if _switch(severity, "boxify") == 0:
        return masks
    t, was_numpy = _to_bool(masks)

    def span(hit: torch.Tensor) -> torch.Tensor:
        # True between the first and the last hit along the last axis (inclusive).
        after_first = hit.int().cummax(-1).values.bool()
        before_last = hit.flip(-1).int().cummax(-1).values.bool().flip(-1)
        return after_first & before_last

    rows, cols = span(t.any(-1)), span(t.any(-2))
    return _back(rows[..., :, None] & cols[..., None, :], was_numpy)


@dataclass(frozen=True)
class _Kind:
    apply: Callable[[torch.Tensor, float, random.Random | int | None], torch.Tensor]
    check: Callable[[float, str], float]
    levels: tuple[float, ...]
    random: bool


PERTURBATIONS: dict[str, _Kind] = {
    "dilate": _Kind(lambda m, s, _: dilate(m, s), _pixels, (0, 2, 4, 8, 16), False),
    "erode": _Kind(lambda m, s, _: erode(m, s), _pixels, (0, 2, 4, 8, 16), False),
    "drop": _Kind(drop_frames, _probability, (0, 0.1, 0.25, 0.5), True),
    "jitter": _Kind(temporal_jitter, _pixels, (0, 1, 2, 3), True),
    "boxify": _Kind(lambda m, s, _: boxify(m, s), _switch, (0, 1), False),
}
KINDS = tuple(PERTURBATIONS)


def _kind(kind: str) -> _Kind:
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown mask perturbation {kind!r}; use one of {', '.join(KINDS)}")
    return PERTURBATIONS[kind]


def check_severity(kind: str, severity: float) -> None:
    """Raise ``ValueError`` when ``kind`` is unknown or ``severity`` is not valid for it."""
    _kind(kind).check(severity, kind)


def severity_levels(kind: str) -> list[float]:
    """The default severity sweep of ``kind`` (pixels at 256x384 for dilate/erode, a probability for drop,
    frames for jitter, off/on for boxify), starting at 0 (no perturbation)."""
    return list(_kind(kind).levels)


def perturb_masks(
    masks: MasksT, kind: str, severity: float, rng: random.Random | int | None = None
) -> MasksT:
    """Apply the perturbation ``kind`` (one of :data:`KINDS`) with ``severity`` to ``(T, H, W)`` masks
    (torch or numpy; the result has the input's type, bool unless returned unchanged at severity 0)."""
    spec = _kind(kind)
    spec.check(severity, kind)
    if np.ndim(masks) != 3:
        raise ValueError(f"masks must be (T, H, W), got shape {tuple(np.shape(masks))}")
    return spec.apply(masks, severity, rng)


@dataclass(frozen=True)
class MaskPerturbation:
    """A configured perturbation, e.g. ``MaskPerturbation("drop", 0.25, seed=0)(masks, key=clip_key)``.

    The random kinds draw from a ``random.Random`` seeded with ``(seed, crc32(key))``: deterministic
    across processes, ranks and runs (Python's ``hash()`` of a string is salted per process).
    """

    kind: str
    severity: float
    seed: int = 0

    def __post_init__(self) -> None:
        check_severity(self.kind, self.severity)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    @property
    def label(self) -> str:
        """A short name for tables and logs, e.g. ``"dilate=4"``."""
        return f"{self.kind}={self.severity:g}"

    def rng_for(self, key: str) -> random.Random:
        """The generator used for the clip ``key``."""
        return random.Random((self.seed << 32) | zlib.crc32(key.encode("utf-8")))

    def __call__(self, masks: MasksT, key: str) -> MasksT:
        return perturb_masks(masks, self.kind, self.severity, self.rng_for(key))
