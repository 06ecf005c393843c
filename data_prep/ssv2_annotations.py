"""Something-Something-v2 annotations: the label JSONs, the Something-Else hand and object boxes
(per-frame boxes to hand tracks, short gaps interpolated) and id lists.

- labels: ``<labels>/something-something-v2-{train,validation}.json``, lists of
  ``{id, label, template, placeholders}``;
- boxes: ``<boxes>/bounding_box_smthsmth_part{1..4}.json``, video id -> per-frame
  ``{name: "<id>/0001.jpg", labels: [{box2d: {x1, y1, x2, y2}, category, standard_category}], ...}``;
  ``category == "hand"`` marks hands, the other labels are the objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LABEL_FILES = {
    "train": "something-something-v2-train.json",
    "validation": "something-something-v2-validation.json",
    "test": "something-something-v2-test.json",
}
BOX_FILES = "bounding_box_smthsmth_part*.json"
_FRAME_RE = re.compile(r"(\d+)\.\w+$")

Box = tuple[float, float, float, float]


class SSV2InputError(RuntimeError):
    """A required SSV2 input (folder, label file, box annotations, SAM2 checkpoint) is missing or unusable."""


@dataclass
class VideoBoxes:
    """The Something-Else boxes of one video, compact: rows ``(frame, x1, y1, x2, y2)`` (float32)."""

    hands: np.ndarray
    objects: list[tuple[str, np.ndarray]]  # (name, rows) per object

    def hands_per_frame(self) -> dict[int, list[Box]]:
        out: dict[int, list[Box]] = {}
        for row in self.hands:
            out.setdefault(int(row[0]), []).append(tuple(float(v) for v in row[1:]))
        return out

    @staticmethod
    def track(rows: np.ndarray) -> dict[int, Box]:
        return {int(r[0]): tuple(float(v) for v in r[1:]) for r in rows}


def parse_frames(entries: list[dict[str, Any]]) -> VideoBoxes:
    """Something-Else entries of one video -> its hand boxes and per-object boxes.

    Frame indices are 0-based (``0001.jpg`` is frame 0). Objects are told apart by
    ``standard_category`` (the placeholder index: two cups in "putting cup next to cup" are two
    objects) and named by their category text; a repeated object in one frame keeps its first box.
    """
    hands: list[tuple[float, ...]] = []
    objects: dict[str, dict[int, Box]] = {}
    texts: dict[str, str] = {}
    for entry in entries:
        match = _FRAME_RE.search(str(entry.get("name", "")))
        if not match:
            continue
        frame = int(match.group(1)) - 1
        for label in entry.get("labels") or []:
            b = label.get("box2d") or {}
            try:
                box = (float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]))
            except (KeyError, TypeError, ValueError):
                continue
            category = str(label.get("category") or "")
            standard = str(label.get("standard_category") or "")
            if category == "hand" or standard == "hand":
                hands.append((frame, *box))
            else:
                key = standard or category or "object"
                texts.setdefault(key, category or key)
                objects.setdefault(key, {}).setdefault(frame, box)
    names = [texts[k] for k in sorted(objects)]
    out = []
    for key in sorted(objects):
        name = texts[key] if names.count(texts[key]) == 1 else f"{texts[key]} ({key})"
        rows = np.array([(f, *b) for f, b in sorted(objects[key].items())], dtype=np.float32).reshape(-1, 5)
        out.append((name, rows))
    return VideoBoxes(np.array(hands, dtype=np.float32).reshape(-1, 5), out)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track_hands(hands: dict[int, list[Box]], min_iou: float = 0.1) -> list[dict[int, Box]]:
    """Link per-frame hand boxes into tracks (greedy, highest IoU with the track's last box first)."""
    tracks: list[dict[int, Box]] = []
    for frame in sorted(hands):
        last = {i: t[max(t)] for i, t in enumerate(tracks)}
        pairs = sorted(
            ((_iou(box, last[i]), i, j) for j, box in enumerate(hands[frame]) for i in last), reverse=True
        )
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for score, i, j in pairs:
            if score < min_iou or i in used_tracks or j in used_boxes:
                continue
            tracks[i][frame] = hands[frame][j]
            used_tracks.add(i)
            used_boxes.add(j)
        for j, box in enumerate(hands[frame]):
            if j not in used_boxes:
                tracks.append({frame: box})
    return tracks


def interpolate_track(track: dict[int, Box], max_gap: int) -> dict[int, Box]:
    """Fill frames between two annotated frames of a track (at most ``max_gap`` apart) linearly."""
    frames = sorted(track)
    out = dict(track)
    for a, b in zip(frames, frames[1:], strict=False):
        if 1 < b - a <= max_gap:
            for f in range(a + 1, b):
                w = (f - a) / (b - a)
                out[f] = tuple((1 - w) * p + w * q for p, q in zip(track[a], track[b], strict=True))
    return out


def load_labels(labels_dir: Path, split_files: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Video id -> (the label file's split, its entry), over every label file present."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for split, name in split_files.items():
        path = labels_dir / name
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SSV2InputError(f"cannot read the label file {path}: {err}") from None
        for entry in entries:
            found.setdefault(str(entry["id"]), (split, entry))
    return found


def load_boxes(box_files: Iterable[Path], wanted: set[str]) -> dict[str, VideoBoxes]:
    """Something-Else boxes of the ``wanted`` video ids from the part files, read one file at a time and
    kept compact (a few KB per video instead of the JSON's nested dicts)."""
    boxes: dict[str, VideoBoxes] = {}
    for path in box_files:
        try:
            part = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SSV2InputError(f"cannot read the box annotations {path}: {err}") from None
        if not isinstance(part, dict):
            raise SSV2InputError(
                f"{path} is not a Something-Else box file (a JSON object: video id -> frames)"
            )
        for vid, entries in part.items():
            if str(vid) in wanted and isinstance(entries, list):
                boxes[str(vid)] = parse_frames(entries)
        del part
    return boxes


def read_id_list(path: Path) -> list[str]:
    """Ids from a text file (one per line, ``#`` comments) or a JSON list of ids or of ``{id: ...}``."""
    if not path.is_file():
        raise SSV2InputError(f"id list {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            return [str(d["id"] if isinstance(d, dict) else d) for d in data]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SSV2InputError(
                f"id list {path}: expected a JSON list of ids or of {{id: ...}} ({err})"
            ) from None
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
