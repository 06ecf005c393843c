"""CLEVRER -> shards: the control signal is the masks of the objects that enter the camera view.

Inputs, as the CLEVRER release lays them out (subfolders such as ``video_00000-01000`` are searched):

- videos: ``<root>/video_<split>/**/video_<id>.mp4`` (480x320, 128 frames);
- annotations: ``<root>/annotation_<split>/**/annotation_<id>.json`` with ``object_property``
  (``object_id``, ``color``, ``material``, ``shape``), ``motion_trajectory`` (per frame, per object
  ``location`` and ``inside_camera_view``) and ``collision`` (``frame_id``, ``object_ids``);
- instance masks: ``<root>/derender_proposals/**/proposal_<id>.json`` from the dataset's frame parser,
  ``frames[].frame_index`` and ``frames[].objects[]`` with ``color``, ``material``, ``shape`` and a COCO
  RLE ``mask`` (``size``, ``counts``).

An object *enters* when it is outside the camera view (or absent) in the first frame and inside it
later; the union of the entering objects' masks is the control signal, every object's mask is kept
for evaluation (``objects``, named ``<id>_<color>_<material>_<shape>``), and the metadata records the
entering objects with their first visible frame and the collisions (for force propagation: which
objects are hit by an entering object and which only by another object).

Counterfactuals: videos of one split whose first frames show the same objects at the same places form
a group (metadata ``group`` and ``variant``, as in the built-in dataset); CLEVRER itself rarely has such
groups, ``first_frame_signature`` is stored for every video so that other sources can be matched.

    python -m data_prep.clevrer --root $CLEVRER_ROOT --out data/shards/clevrer
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import rle
from data_prep.build import Item
from data_prep.common import (
    LISTING,
    STARTUP,
    add_common_arguments,
    check_length,
    prep_times,
    read_video,
    run_split,
)
from interdyn.commands.spelling import ScriptParser
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.shard_format import SkipSample, encode_masks

SPLITS = ("train", "validation")
_ID_RE = re.compile(r"(\d+)")


class ClevrerInputError(RuntimeError):
    """A required CLEVRER folder is missing."""


def _index(folder: Path, pattern: str) -> dict[str, Path]:
    """``video_00042.mp4`` -> ``{"00042": path}`` for every match below ``folder``."""
    out: dict[str, Path] = {}
    for path in folder.rglob(pattern):
        match = _ID_RE.search(path.stem)
        if match:
            out.setdefault(match.group(1), path)
    return out


def object_name(prop: dict[str, Any]) -> str:
    return f"{prop['object_id']}_{prop.get('color', '')}_{prop.get('material', '')}_{prop.get('shape', '')}"


def visibility(annotation: dict[str, Any], num_frames: int) -> dict[int, np.ndarray]:
    """object id -> bool (T,) ``inside_camera_view`` per frame (absent from a frame's list = outside)."""
    ids = [int(p["object_id"]) for p in annotation.get("object_property", [])]
    visible = {i: np.zeros(num_frames, dtype=bool) for i in ids}
    for entry in annotation.get("motion_trajectory", []):
        f = int(entry.get("frame_id", -1))
        if not 0 <= f < num_frames:
            continue
        for obj in entry.get("objects", []):
            i = int(obj["object_id"])
            if i in visible and obj.get("inside_camera_view", True):
                visible[i][f] = True
    return visible


def entering_objects(annotation: dict[str, Any], num_frames: int) -> list[tuple[int, int]]:
    """``(object id, first visible frame)`` of the objects outside the view in frame 0 and inside later."""
    out = []
    for i, vis in visibility(annotation, num_frames).items():
        if not vis[0] and vis.any():
            out.append((i, int(np.argmax(vis))))
    return sorted(out, key=lambda x: (x[1], x[0]))


def first_frame_signature(annotation: dict[str, Any]) -> str:
    """A hash of the objects in view in the first frame (attributes and positions to 0.05 units)."""
    props = {int(p["object_id"]): p for p in annotation.get("object_property", [])}
    first = next(
        (e for e in annotation.get("motion_trajectory", []) if int(e.get("frame_id", -1)) == 0), None
    )
    state = []
    for obj in (first or {}).get("objects", []):
        if not obj.get("inside_camera_view", True):
            continue
        p = props.get(int(obj["object_id"]), {})
        loc = [round(float(v) / 0.05) * 0.05 for v in obj.get("location", [])[:2]]
        state.append((p.get("color"), p.get("material"), p.get("shape"), *(f"{v:.2f}" for v in loc)))
    if not state:  # an empty first frame says nothing about a shared scene
        return ""
    return hashlib.sha1(json.dumps(sorted(state)).encode()).hexdigest()[:16]


def proposal_masks(
    proposal: dict[str, Any], props: list[dict[str, Any]], num_frames: int, height: int, width: int
) -> np.ndarray:
    """Per-object masks ``(K, T, H, W)`` from the frame parser's RLE proposals, matched to the annotated
    objects by (color, material, shape); a frame where an object has no proposal gets an empty mask."""
    lookup: dict[tuple, list[int]] = defaultdict(list)
    for k, p in enumerate(props):
        lookup[(p.get("color"), p.get("material"), p.get("shape"))].append(k)
    masks = np.zeros((len(props), num_frames, height, width), dtype=bool)
    for frame in proposal.get("frames", []):
        f = int(frame.get("frame_index", -1))
        if not 0 <= f < num_frames:
            continue
        for obj in frame.get("objects", []):
            ks = lookup.get((obj.get("color"), obj.get("material"), obj.get("shape")))
            if not ks or "mask" not in obj:
                continue
            try:
                mask = rle.decode(obj["mask"])
            except (ValueError, KeyError, TypeError) as err:
                raise SkipSample("bad_masks", f"frame {f}: {err}") from None
            if mask.shape != (height, width):
                raise SkipSample(
                    "bad_masks", f"mask size {mask.shape} differs from the video's {(height, width)}"
                )
            for k in ks:  # identical attributes: both objects get the union (rare)
                masks[k, f] |= mask
    return masks


@dataclass
class ClevrerMaker:
    """Turns one CLEVRER video id (with its file paths and group) into a shard sample."""

    split: str
    num_frames: int = PAPER_CLIP.num_frames
    target_fps: float | None = PAPER_CLIP.fps
    frame_stride: int | None = None

    def __call__(self, item: Item) -> tuple[str, dict[str, Any]]:
        video_path, annotation_path, proposal_path, group = item.data
        if annotation_path is None:
            raise SkipSample("missing_annotations", "no annotation JSON")
        if proposal_path is None:
            raise SkipSample("missing_annotations", "no frame-parser proposal JSON (derender_proposals)")
        try:
            annotation = json.loads(Path(annotation_path).read_text())
            proposal = json.loads(Path(proposal_path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SkipSample("bad_annotations", str(err)) from None
        if video_path is None:
            raise SkipSample("missing_video", f"no video_{item.id}.mp4")
        data, frames, fps = read_video(Path(video_path))
        t, h, w, _ = frames.shape
        check_length(t, fps, self.num_frames, self.target_fps, self.frame_stride)
        props = sorted(annotation.get("object_property", []), key=lambda p: int(p["object_id"]))
        if not props:
            raise SkipSample("bad_annotations", "no object_property")
        entering = entering_objects(annotation, t)
        if not entering:
            raise SkipSample("no_entering_object", "every object is in view in the first frame")
        objects = proposal_masks(proposal, props, t, h, w)
        position = {int(p["object_id"]): k for k, p in enumerate(props)}
        control = np.zeros((t, h, w), dtype=bool)
        for obj_id, _ in entering:
            control |= objects[position[obj_id]]
        if not control.any():
            raise SkipSample("no_driver_mask", "the frame parser has no mask for the entering objects")

        entering_ids = {i for i, _ in entering}
        collisions = [
            {"frame": int(c["frame_id"]), "object_ids": [int(i) for i in c.get("object_ids", [])]}
            for c in annotation.get("collision", [])
        ]
        direct = sorted(
            {i for c in collisions if entering_ids & set(c["object_ids"]) for i in c["object_ids"]}
            - entering_ids
        )
        # objects set moving by a collision chain that started at an entering object, without touching it
        moved = set(entering_ids)
        for c in sorted(collisions, key=lambda c: c["frame"]):
            if moved & set(c["object_ids"]):
                moved |= set(c["object_ids"])
        indirect = sorted(moved - entering_ids - set(direct))
        names = [object_name(p) for p in props]
        meta = {
            "id": item.id,
            "dataset": "clevrer",
            "split": self.split,
            "fps": fps,
            "num_frames": t,
            "height": h,
            "width": w,
            "label": "objects enter and collide",
            "template": "",
            "objects": names,
            "mask_source": "gt",
            "entering": [
                {"object": names[position[i]], "object_id": i, "first_visible_frame": f} for i, f in entering
            ],
            "collisions": collisions,
            "hit_directly": [names[position[i]] for i in direct if i in position],
            "hit_indirectly": [names[position[i]] for i in indirect if i in position],
            "first_frame_signature": first_frame_signature(annotation),
        }
        if group is not None:
            meta["group"], meta["variant"] = group
        fields = {"video.mp4": data, "masks.npz": encode_masks(control, objects, names), "json": meta}
        return f"clevrer-{item.id}", fields


def find_split(root: Path, split: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """Videos and annotations of one split (``video_<split>``, ``annotation_<split>``)."""
    videos_dir, annotations_dir = root / f"video_{split}", root / f"annotation_{split}"
    if not videos_dir.is_dir() and not annotations_dir.is_dir():
        raise ClevrerInputError(f"neither {videos_dir} nor {annotations_dir} exists (split {split})")
    videos = _index(videos_dir, "video_*.mp4") if videos_dir.is_dir() else {}
    annotations = _index(annotations_dir, "annotation_*.json") if annotations_dir.is_dir() else {}
    return videos, annotations


def counterfactual_groups(annotations: dict[str, Path], ids: list[str]) -> dict[str, tuple[str, int]]:
    """id -> (group, variant) for videos that share their first frame's objects with another video."""
    by_signature: dict[str, list[str]] = defaultdict(list)
    for vid in ids:
        path = annotations.get(vid)
        if path is None:
            continue
        try:
            by_signature[first_frame_signature(json.loads(path.read_text()))].append(vid)
        except (OSError, json.JSONDecodeError):
            continue
    return {
        vid: (signature, variant)
        for signature, members in by_signature.items()
        if len(members) > 1
        for variant, vid in enumerate(sorted(members))
        if signature
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``python -m data_prep.clevrer``."""
    parser = ScriptParser(
        prog="python -m data_prep.clevrer",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="CLEVRER folder (video_*, annotation_*, derender_proposals)"
    )
    parser.add_argument(
        "--proposals", type=Path, default=None, help="frame-parser masks (default: <root>/derender_proposals)"
    )
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits to write")
    parser.add_argument(
        "--no_groups",
        action="store_true",
        help="skip the counterfactual grouping pass (it reads every annotation once more)",
    )
    add_common_arguments(parser, "data/shards/clevrer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    times = prep_times("data_prep.clevrer", argv)
    args = parse_args(argv)
    times.add(STARTUP, times.total())
    listing, listed = f"{LISTING} (files, counterfactual groups)", times.total()
    try:
        if not args.root.is_dir():
            raise ClevrerInputError(f"CLEVRER root {args.root} does not exist")
        proposals_dir = args.proposals or args.root / "derender_proposals"
        if not proposals_dir.is_dir():
            raise ClevrerInputError(
                f"no frame-parser masks at {proposals_dir} (the CLEVRER 'derender_proposals' download); pass --proposals"
            )
        proposals = _index(proposals_dir, "proposal_*.json") or _index(proposals_dir, "sim_*.json")
        if not proposals:
            raise ClevrerInputError(
                f"{proposals_dir} holds no proposal_<id>.json (or sim_<id>.json) files with per-frame masks"
            )
        per_split = {split: find_split(args.root, split) for split in args.splits}
    except ClevrerInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    times.add(listing, times.total() - listed)
    code = 0
    for split, (videos, annotation_paths) in per_split.items():
        ids = sorted(set(videos) | set(annotation_paths))[: args.limit]
        with times.phase(listing):
            groups = {} if args.no_groups else counterfactual_groups(annotation_paths, ids)
        items = [
            Item(
                vid,
                (
                    str(videos[vid]) if vid in videos else None,
                    str(annotation_paths[vid]) if vid in annotation_paths else None,
                    str(proposals[vid]) if vid in proposals else None,
                    groups.get(vid),
                ),
            )
            for vid in ids
        ]
        maker = ClevrerMaker(split, args.num_frames, args.target_fps, args.frame_stride)
        provenance = {
            "preparer": "data_prep.clevrer",
            "root": str(args.root),
            "proposals": str(proposals_dir),
        }
        code = run_split(
            args, "clevrer", split, items, maker, {"groups": not args.no_groups}, provenance, times=times
        )
        if code:
            break
    times.show()
    return code


if __name__ == "__main__":
    sys.exit(main())
