"""Pure helpers for the region-level experiments (force propagation, counterfactuals).

- :func:`region_errors`: MSE / MAE / PSNR between two videos, pooled over the pixels of a region
  (frames ``1..T-1`` by default: frame 0 is the shared conditioning frame).
- :func:`collision_roles` / :func:`hit_roles`: which objects the driver hits *directly* (a collision
  with the driver) and which only *indirectly* (reached through a chain of collisions between other
  objects, in time order), from a collision list or a clip's metadata (built-in dataset:
  ``physics.collisions``; CLEVRER: ``collisions`` + ``entering``, or ``hit_directly`` /
  ``hit_indirectly``).
- :func:`role_region`: the pixels of a set of objects, from per-object masks.
- :func:`shrink_video` / :func:`shrink_masks`: bounded-size copies for reports that keep videos.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from interdyn.utils.morphology import dilate
from interdyn.utils.render import to_uint8


def region_errors(
    fake: torch.Tensor, real: torch.Tensor, region: torch.Tensor | None, skip_first: bool = True
) -> dict[str, float]:
    """Errors between videos ``(T, 3, H, W)`` in ``[0, 1]`` over the pixels where ``region`` ``(T, H, W)``
    is set (the whole frame when None), all channels pooled.

    Returns ``mse``, ``mae``, ``psnr`` (``10 log10(1 / mse)``, from the pooled MSE; ``inf`` when equal)
    and ``pixels`` (region pixels counted). Values are NaN when the region is empty on the frames used.
    """
    if fake.shape != real.shape:
        raise ValueError(f"videos differ in shape: {tuple(fake.shape)} vs {tuple(real.shape)}")
    start = 1 if skip_first and fake.shape[0] > 1 else 0
    diff = fake[start:].double() - real[start:].double().to(fake.device)  # (T', 3, H, W)
    if region is None:
        inside = torch.ones(diff.shape[0], *diff.shape[-2:], dtype=torch.bool, device=diff.device)
    else:
        if region.shape != (fake.shape[0], *fake.shape[-2:]):
            raise ValueError(
                f"region must be (T, H, W) = {(fake.shape[0], *fake.shape[-2:])}, got {tuple(region.shape)}"
            )
        inside = region[start:].to(device=diff.device, dtype=torch.bool)
    pixels = int(inside.sum())
    if pixels == 0:
        return {"mse": math.nan, "mae": math.nan, "psnr": math.nan, "pixels": 0.0}
    values = diff.permute(0, 2, 3, 1)[inside]  # (pixels, 3)
    mse = float(values.pow(2).mean())
    mae = float(values.abs().mean())
    psnr = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return {"mse": mse, "mae": mae, "psnr": psnr, "pixels": float(pixels)}


def collision_roles(
    events: Iterable[Sequence[Any]],
    drivers: Iterable[Hashable] = ("driver",),
    max_frame: int | None = None,
) -> tuple[list[Hashable], list[Hashable]]:
    """Objects hit directly and indirectly, from collision events ``(frame, a, b)``.

    An object is *direct* when it collides with a driver; *indirect* when it is not direct but is set
    moving through a chain of collisions that starts at a driver: a collision at frame ``f`` passes the
    motion from ``a`` to ``b`` (or back) only if ``a`` was already reached at a frame ``<= f``. Events
    after ``max_frame`` (e.g. past the clip's last source frame) are ignored. Both lists are ordered by
    the frame where the object was first reached.
    """
    driver_set = set(drivers)
    kept = sorted(
        ((int(e[0]), e[1], e[2]) for e in events if max_frame is None or int(e[0]) <= max_frame),
        key=lambda e: e[0],
    )
    reached: dict[Hashable, float] = dict.fromkeys(driver_set, -math.inf)
    direct: dict[Hashable, int] = {}
    for f, a, b in kept:
        for x, y in ((a, b), (b, a)):
            if x in driver_set and y not in driver_set and y not in direct:
                direct[y] = f
    changed = True
    while changed:  # fixed point: chains within one frame need several passes
        changed = False
        for f, a, b in kept:
            for x, y in ((a, b), (b, a)):
                if x in reached and reached[x] <= f and (y not in reached or reached[y] > f):
                    reached[y] = f
                    changed = True
    indirect = {y: f for y, f in reached.items() if y not in driver_set and y not in direct}
    order = lambda d: sorted(d, key=lambda k: (d[k], str(k)))  # noqa: E731
    return order(direct), order(indirect)


def _clevrer_names(meta: dict[str, Any]) -> dict[int, str] | None:
    """CLEVRER object id -> name (names are ``"<id>_<colour>_<material>_<shape>"``), None if unparsable."""
    out = {}
    for name in meta.get("objects", []):
        head = str(name).split("_", 1)[0]
        if not head.isdigit():
            return None
        out[int(head)] = str(name)
    return out


def hit_roles(
    meta: dict[str, Any] | None, max_frame: int | None = None
) -> tuple[list[str], list[str]] | None:
    """Names of the objects hit directly and indirectly in a clip, from its metadata; None if unknown.

    - Built-in dataset (``meta["physics"]["collisions"]``: ``[frame, a, b]`` with ``a``/``b`` a disc index
      or ``"driver"``): :func:`collision_roles`, disc ``k`` named ``meta["objects"][k]``.
    - CLEVRER with ``max_frame``: recomputed from ``collisions`` (``{"frame", "object_ids"}``) with the
      ``entering`` objects as drivers, so that collisions after the clip are left out; otherwise (or
      when the names cannot be mapped) ``hit_directly`` / ``hit_indirectly`` as stored (whole video).
    """
    if not meta:
        return None
    physics = meta.get("physics")
    if isinstance(physics, dict) and "collisions" in physics:
        names = meta.get("objects") or [f"disc{k}" for k in range(len(physics.get("positions", [[]])[0]))]
        direct, indirect = collision_roles(physics["collisions"], ("driver",), max_frame)
        return [names[int(k)] for k in direct], [names[int(k)] for k in indirect]
    if max_frame is not None and "collisions" in meta and "entering" in meta:
        id_names = _clevrer_names(meta)
        if id_names is not None:
            events = [
                (c["frame"], a, b)
                for c in meta["collisions"]
                for i, a in enumerate(c.get("object_ids", []))
                for b in c["object_ids"][i + 1 :]
            ]
            drivers = [int(e["object_id"]) for e in meta["entering"]]
            direct, indirect = collision_roles(events, drivers, max_frame)
            if all(int(k) in id_names for k in direct + indirect):
                return [id_names[int(k)] for k in direct], [id_names[int(k)] for k in indirect]
    if "hit_directly" in meta or "hit_indirectly" in meta:
        return list(meta.get("hit_directly", [])), list(meta.get("hit_indirectly", []))
    return None


def role_region(
    objects: torch.Tensor,
    object_names: Sequence[str],
    role: Iterable[str],
    dilation: int = 0,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, int]:
    """Union per frame of the masks of the objects named in ``role``.

    Args:
        objects: bool ``(K, T, H, W)`` per-object masks; ``object_names`` their ``K`` names.
        role: names of the objects of the role (names without a mask are ignored).
        dilation: grow the union by this many pixels (square footprint) per frame, so that a generated
            object slightly off its true place still falls inside.
        exclude: bool ``(T, H, W)`` pixels removed from the region afterwards (e.g. the driver).

    Returns:
        ``(region (T, H, W) bool or None when no object of the role has a mask, objects with a mask)``.
    """
    index = {str(n): k for k, n in enumerate(object_names)}
    ks = [index[str(n)] for n in role if str(n) in index]
    if not ks:
        return None, 0
    region = objects[ks].bool().any(0)
    if dilation:
        region = dilate(region, dilation)
    if exclude is not None:
        region = region & ~exclude.to(device=region.device, dtype=torch.bool)
    return region, len(ks)


def _shrunk_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def shrink_video(video: torch.Tensor, max_side: int) -> torch.Tensor:
    """``(..., 3, H, W)`` float in ``[0, 1]`` -> uint8 on the CPU, area-downsampled so that the longer side
    is at most ``max_side`` (the aspect ratio kept)."""
    lead, (h, w) = video.shape[:-3], video.shape[-2:]
    size = _shrunk_size(h, w, max_side)
    flat = video.reshape(-1, 3, h, w).float()
    if size != (h, w):
        flat = F.interpolate(flat, size=size, mode="area")
    return to_uint8(flat).reshape(*lead, 3, *size).cpu()


def shrink_masks(masks: torch.Tensor, max_side: int) -> torch.Tensor:
    """Bool ``(..., H, W)`` -> bool on the CPU at :func:`shrink_video`'s size; a pixel is set when any
    source pixel under it is (conservative: a shrunk driver mask still covers the driver)."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    size = _shrunk_size(h, w, max_side)
    flat = masks.reshape(-1, 1, h, w).float()
    if size != (h, w):
        flat = F.interpolate(flat, size=size, mode="area")
    return (flat > 0).reshape(*lead, *size).cpu()
