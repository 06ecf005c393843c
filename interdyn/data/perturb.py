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

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from interdyn.utils.morphology import MasksT, as_bool, check_pixels, dilate, erode, like_input


def _rng(rng: random.Random | int | None) -> random.Random:
    if rng is None:
        return random  # type: ignore[return-value]  # the module has the same interface
    if isinstance(rng, random.Random):
        return rng
    return random.Random(int(rng))


def _probability(p: float, kind: str) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float | np.integer | np.floating) or not 0 <= p <= 1:
        raise ValueError(f"{kind} severity must be a probability in [0, 1], got {p!r}")
    return float(p)


def _switch(s: float, kind: str) -> int:
    if isinstance(s, bool) or s not in (0, 1):
        raise ValueError(f"{kind} severity must be 0 (off) or 1 (on), got {s!r}")
    return int(s)


def drop_frames(masks: MasksT, p: float, rng: random.Random | int | None = None) -> MasksT:
    """Empty the mask of each frame except the first with probability ``p``. One uniform number is drawn per
    frame whatever ``p``, so with the same ``rng`` state the frames dropped at a lower ``p`` are a subset of
    those dropped at a higher one. ``rng``: a ``random.Random``, a seed, or None (the global generator)."""
    p = _probability(p, "drop")
    if p == 0:
        return masks
    t, was_numpy = as_bool(masks)
    gen = _rng(rng)
    keep = torch.tensor([True] + [gen.random() >= p for _ in range(t.shape[0] - 1)], device=t.device)
    out = t & keep.reshape(-1, *([1] * (t.ndim - 1)))
    return like_input(out, was_numpy)


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
    max_shift = check_pixels(max_shift, "jitter")
    if max_shift == 0:
        return masks
    t, was_numpy = as_bool(masks)
    return like_input(t[jitter_indices(t.shape[0], max_shift, rng)], was_numpy)


def boxify(masks: MasksT, severity: float = 1) -> MasksT:
    """Replace every mask of ``(..., H, W)`` by its filled bounding box (empty masks stay empty);
    ``severity`` 0 returns ``masks`` as given."""
    if _switch(severity, "boxify") == 0:
        return masks
    t, was_numpy = as_bool(masks)

    def span(hit: torch.Tensor) -> torch.Tensor:
        # True between the first and the last hit along the last axis (inclusive).
        after_first = hit.int().cummax(-1).values.bool()
        before_last = hit.flip(-1).int().cummax(-1).values.bool().flip(-1)
        return after_first & before_last

    rows, cols = span(t.any(-1)), span(t.any(-2))
    return like_input(rows[..., :, None] & cols[..., None, :], was_numpy)


@dataclass(frozen=True)
class _Kind:
    apply: Callable[[torch.Tensor, float, random.Random | int | None], torch.Tensor]
    check: Callable[[float, str], float]
    levels: tuple[float, ...]
    random: bool


PERTURBATIONS: dict[str, _Kind] = {
    "dilate": _Kind(lambda m, s, _: dilate(m, s), check_pixels, (0, 2, 4, 8, 16), False),
    "erode": _Kind(lambda m, s, _: erode(m, s), check_pixels, (0, 2, 4, 8, 16), False),
    "drop": _Kind(drop_frames, _probability, (0, 0.1, 0.25, 0.5), True),
    "jitter": _Kind(temporal_jitter, check_pixels, (0, 1, 2, 3), True),
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
