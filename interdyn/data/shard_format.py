"""The shard format: what the preparers in ``data_prep`` write and :mod:`interdyn.data.shards` reads.

One WebDataset sample per source video, every frame kept at the native frame rate (clip sampling, fps
and crops stay training-time choices):

- ``__key__``: ``<dataset>-<video id>`` (letters, digits, ``-`` and ``_``; no dots, which WebDataset
  reads as field separators);
- ``video.mp4`` (or the source's ``video.webm``): the RGB video, encoded bytes;
- ``masks.npz``: ``control`` bool (T, H, W), the driver masks of every frame; optional ``objects`` bool
  (K, T, H, W) and ``object_names``, per-object masks kept for evaluation;
- ``json``: ``{id, dataset, split, fps, num_frames, height, width, label, objects, mask_source, ...}``.

Shards are named ``<dataset>-<split>-%06d.tar`` inside ``<out>/<split>/``, next to ``index.json``
(sample count, shard list, how it was made). A sample that cannot be written or read raises
:class:`SkipSample` with a short reason, which the writer and the reader count by reason.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VIDEO_FIELD = "video.mp4"
# the fields a reader accepts as the video, in order of preference
VIDEO_FIELDS = (VIDEO_FIELD, "video.webm", "mp4", "webm")
MASKS_FIELD = "masks.npz"
META_FIELD = "json"
INDEX_FILE = "index.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SkipSample(Exception):
    """A source item or shard sample that must be left out; ``reason`` is a short category (counted in the
    build report and in a loader's skip counts) and ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def shard_name(dataset: str, split: str, index: int) -> str:
    """The file name of shard ``index`` of a split: ``<dataset>-<split>-%06d.tar``."""
    return f"{dataset}-{split}-{index:06d}.tar"


def encode_masks(
    control: np.ndarray, objects: np.ndarray | None = None, object_names: list[str] | None = None
) -> bytes:
    """Pack masks into the ``masks.npz`` field (compressed; bool arrays)."""
    control = np.asarray(control)
    if control.ndim != 3:
        raise ValueError(f"control masks must be (T, H, W), got {control.shape}")
    arrays: dict[str, np.ndarray] = {"control": control.astype(bool)}
    if objects is not None:
        objects = np.asarray(objects).astype(bool)
        if objects.ndim != 4 or objects.shape[1:] != control.shape:
            raise ValueError(
                f"object masks must be (K, T, H, W) matching control {control.shape}, got {objects.shape}"
            )
        arrays["objects"] = objects
        arrays["object_names"] = np.array(object_names or [f"object{i}" for i in range(len(objects))])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def encode_fields(key: str, fields: dict[str, bytes | dict]) -> dict[str, bytes]:
    """Check a sample key and turn its fields into bytes (dicts become JSON) before anything is written."""
    if not _KEY_RE.match(key):
        raise ValueError(f"sample key {key!r} may hold only letters, digits, '-' and '_' (no dots)")
    encoded = {}
    for ext, value in fields.items():
        data = json.dumps(value, sort_keys=True).encode() if isinstance(value, dict) else value
        if not isinstance(data, bytes):
            raise TypeError(f"field {ext!r} of {key!r} must be bytes or a dict, got {type(value).__name__}")
        encoded[ext] = data
    return encoded


@dataclass
class ShardSample:
    """One shard sample, decoded but for its video: ``video`` (encoded bytes), ``meta`` (the json),
    ``control`` bool (T, H, W) and, when asked for and present, ``objects`` bool (K, T, H, W)."""

    key: str
    video: bytes
    meta: dict[str, Any]
    control: np.ndarray
    objects: np.ndarray | None = None
    object_names: list[str] = field(default_factory=list)


def decode_sample(sample: dict[str, Any], with_objects: bool = False) -> ShardSample:
    """A raw WebDataset sample -> :class:`ShardSample`; raises :class:`SkipSample` (``incomplete`` or
    ``bad_masks_or_json``) for a sample that does not follow the format."""
    if META_FIELD not in sample or MASKS_FIELD not in sample:
        raise SkipSample("incomplete", f"fields {sorted(k for k in sample if not k.startswith('__'))}")
    video_field = next((f for f in VIDEO_FIELDS if f in sample), None)
    if video_field is None:
        raise SkipSample("incomplete", "no video field")
    try:
        meta = json.loads(sample[META_FIELD])
        if not isinstance(meta, dict):
            raise ValueError(f"the json is a {type(meta).__name__}, not an object")
        objects, object_names = None, []
        with np.load(io.BytesIO(sample[MASKS_FIELD])) as npz:
            control = npz["control"].astype(bool)
            if control.ndim != 3 or control.shape[0] == 0:
                raise ValueError(f"control masks of shape {control.shape}, not (T, H, W)")
            if with_objects and "objects" in npz.files:
                objects = npz["objects"].astype(bool)
                if objects.ndim != 4:
                    raise ValueError(f"object masks of shape {objects.shape}, not (K, T, H, W)")
                object_names = [str(n) for n in npz["object_names"]] if "object_names" in npz.files else []
    except Exception as err:  # noqa: BLE001 - any parse failure means a bad sample
        raise SkipSample("bad_masks_or_json", str(err)) from None
    return ShardSample(sample.get("__key__", "?"), sample[video_field], meta, control, objects, object_names)
