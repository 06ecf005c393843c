"""Something-Something-v2 -> shards, with hand masks from SAM2 (or filled hand boxes).

Inputs (see docs/data.md for the layouts):

- the videos, ``<videos>/<id>.webm`` (VP9, 12 fps, 240 px high), kept as they are in the shards;
- the label JSONs, ``<labels>/something-something-v2-{train,validation}.json``: lists of
  ``{id, label, template, placeholders}``;
- the Something-Else boxes, ``<boxes>/bounding_box_smthsmth_part{1..4}.json``: video id ->
  per-frame ``{name: "<id>/0001.jpg", labels: [{box2d: {x1, y1, x2, y2}, category,
  standard_category}], ...}``; ``category == "hand"`` marks hands, the other labels are the objects.

Each kept video becomes one sample ``ssv2-<id>``: the original webm, ``masks.npz`` with the hand masks
of every frame (``control``) and one filled-box mask per object (``objects``, for evaluation), and
the metadata (label, template, placeholders, per-frame hand and object boxes, ``mask_source``).

Hand masks: ``--masks sam2`` prompts the SAM2 video predictor with the hand boxes (one SAM2 object per
hand track, boxes on every ``--sam2_prompt_every``-th annotated frame) and propagates between them;
all hands are merged into one mask per frame. ``--masks boxes`` fills the hand boxes instead (no SAM2
needed); frames without an annotation between two annotated ones get linearly interpolated boxes.

The annotations are read by :mod:`data_prep.ssv2_annotations`, the SAM2 masks made by
:mod:`data_prep.sam2_masks`; this module turns one video into a sample and holds the command line.

    python -m data_prep.ssv2 --root $SSV2_ROOT --boxes $SOMETHING_ELSE --out data/shards/ssv2 \
        --masks sam2 --sam2_checkpoint sam2.1_hiera_large.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.build import Item
from data_prep.common import (
    LISTING,
    STARTUP,
    add_common_arguments,
    check_length,
    clip_box,
    count_video,
    fill_boxes,
    prep_times,
    read_video,
    run_split,
)
from data_prep.parts import Part, PartSpecError, part_device, resolve_part
from data_prep.sam2_masks import DEFAULT_SAM2_CONFIG, Sam2Settings, sam2_masks, sam2_predictor
from data_prep.ssv2_annotations import (
    BOX_FILES,
    LABEL_FILES,
    SSV2InputError,
    VideoBoxes,
    interpolate_track,
    load_boxes,
    load_labels,
    read_id_list,
    track_hands,
)
from interdyn.commands.spelling import ScriptParser
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.shard_format import SkipSample, encode_masks

VIDEO_DIRS = ("20bn-something-something-v2", "videos", "")
LABEL_DIRS = ("labels", "annotations", "")


# --------------------------------------------------------------------------- one video
@dataclass
class SSV2Maker:
    """Turns one SSV2 item (id, label entry, Something-Else entries) into a shard sample."""

    videos_dir: str
    split: str
    masks: str = "boxes"
    num_frames: int = PAPER_CLIP.num_frames
    target_fps: float | None = PAPER_CLIP.fps
    frame_stride: int | None = None
    max_gap: int = 12
    sam2: Sam2Settings | None = None

    def __call__(self, item: Item) -> tuple[str, dict[str, Any]]:
        label_entry, boxes = item.data
        if boxes is None:
            raise SkipSample("missing_annotations", "no Something-Else entry for this video")
        hands = boxes.hands_per_frame()
        if not hands:
            raise SkipSample("no_hand_boxes", "the annotations have no box with category 'hand'")
        video_path = Path(self.videos_dir) / f"{item.id}.webm"
        if self.masks == "sam2":
            data, frames, fps = read_video(video_path)
            t, h, w, _ = frames.shape
        else:  # boxes need only the frame count and size
            data, t, fps, h, w = count_video(video_path)
        check_length(t, fps, self.num_frames, self.target_fps, self.frame_stride)

        # clip every box to the frame; boxes wholly outside (or past the last frame) are dropped
        hands = {f: [c for b in bs if (c := clip_box(b, h, w))] for f, bs in hands.items() if f < t}
        hands = {f: bs for f, bs in hands.items() if bs}
        if not hands:
            raise SkipSample("boxes_outside_frame", f"no hand box lies inside the {w}x{h} frame")
        annotated = track_hands(hands)
        tracks = [interpolate_track(tr, self.max_gap) for tr in annotated]
        boxes_per_frame = [
            [b for tr in tracks if f in tr for b in [clip_box(tr[f], h, w)] if b] for f in range(t)
        ]
        if self.masks == "sam2":
            if self.sam2 is None:
                raise ValueError("masks='sam2' needs Sam2Settings")
            control = sam2_masks(frames, annotated, self.sam2)  # prompted with annotated boxes only
            mask_source = "sam2"
        else:
            control = fill_boxes(boxes_per_frame, h, w)
            mask_source = "boxes"

        names = [name for name, _ in boxes.objects]
        object_boxes: dict[str, list[list[int] | None]] = {}
        object_masks = np.zeros((len(names), t, h, w), dtype=bool)
        for k, (name, rows) in enumerate(boxes.objects):
            track = interpolate_track(VideoBoxes.track(rows), self.max_gap)
            per_frame = [clip_box(track[f], h, w) if f in track else None for f in range(t)]
            object_boxes[name] = [list(b) if b else None for b in per_frame]
            object_masks[k] = fill_boxes([[b] if b else [] for b in per_frame], h, w)

        label_split, label = label_entry if label_entry else (None, {})
        meta = {
            "id": item.id,
            "dataset": "ssv2",
            "split": self.split,
            "label_split": label_split,
            "fps": fps,
            "num_frames": t,
            "height": h,
            "width": w,
            "label": label.get("label", ""),
            "template": label.get("template", ""),
            "placeholders": label.get("placeholders", []),
            "objects": names,
            "mask_source": mask_source,
            "hand_boxes": [[list(b) for b in bs] for bs in boxes_per_frame],
            "object_boxes": object_boxes,
            "object_mask_source": "boxes",
        }
        fields = {
            "video.webm": data,
            "masks.npz": encode_masks(control, object_masks if names else None, names or None),
            "json": meta,
        }
        return f"ssv2-{item.id}", fields


# --------------------------------------------------------------------------- command line
def _find_dir(
    root: Path | None, explicit: Path | None, candidates: tuple[str, ...], what: str, probe: str
) -> Path:
    if explicit is not None:
        if not explicit.is_dir():
            raise SSV2InputError(f"the {what} folder {explicit} does not exist")
        return explicit
    if root is None:
        raise SSV2InputError(f"give --root (SSV2_ROOT) or --{what}")
    if not root.is_dir():
        raise SSV2InputError(f"SSV2 root {root} does not exist")
    for name in candidates:
        folder = root / name if name else root
        if folder.is_dir() and any(folder.glob(probe)):
            return folder
    tried = ", ".join(str(root / c) if c else str(root) for c in candidates)
    raise SSV2InputError(f"no {what} found (looked for {probe} in {tried}); pass --{what} explicitly")


def _file_stamps(paths: Iterable[Path]) -> dict[str, int]:
    """File name -> size, for the files that exist."""
    return {Path(p).name: Path(p).stat().st_size for p in paths if Path(p).is_file()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ScriptParser(
        prog="python -m data_prep.ssv2",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("inputs")
    src.add_argument("--root", type=Path, default=None, help="SSV2 folder (videos and labels inside)")
    src.add_argument(
        "--videos", type=Path, default=None, help="folder of <id>.webm (default: found under --root)"
    )
    src.add_argument(
        "--labels", type=Path, default=None, help="folder of the label JSONs (default: found under --root)"
    )
    src.add_argument(
        "--boxes",
        type=Path,
        required=True,
        help="Something-Else folder with bounding_box_smthsmth_part*.json",
    )
    src.add_argument("--splits", nargs="+", default=["train", "validation"], help="splits to write")
    src.add_argument(
        "--ids",
        action="append",
        default=[],
        metavar="SPLIT=FILE",
        help="take SPLIT's ids from FILE (text, one per line, or JSON); e.g. test=eval_ids.txt. "
        "Ids of other written splits are removed from train.",
    )
    masks = parser.add_argument_group("hand masks")
    masks.add_argument(
        "--masks", choices=["sam2", "boxes"], default="sam2", help="SAM2 masks or filled boxes"
    )
    masks.add_argument(
        "--sam2_checkpoint", type=Path, default=None, help="SAM2 checkpoint (.pt); required with --masks sam2"
    )
    masks.add_argument(
        "--sam2_config", default=DEFAULT_SAM2_CONFIG, help="SAM2 model config (matching the checkpoint)"
    )
    masks.add_argument(
        "--sam2_prompt_every", type=int, default=1, help="prompt every k-th annotated frame of a hand"
    )
    masks.add_argument(
        "--sam2_override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra hydra override for the SAM2 config, e.g. ++model.compile_image_encoder=true",
    )
    masks.add_argument(
        "--device",
        default=None,
        help="SAM2 device (default: cuda:LOCAL_RANK under torchrun/srun, else cuda if available, else cpu)",
    )
    masks.add_argument(
        "--max_gap", type=int, default=12, help="longest run of unannotated frames to interpolate boxes over"
    )
    add_common_arguments(parser, "data/shards/ssv2")
    args = parser.parse_args(argv)
    if args.masks == "sam2":
        if args.sam2_checkpoint is None:
            parser.error("--masks sam2 needs --sam2_checkpoint PATH (a SAM2 .pt file); or use --masks boxes")
        if not args.sam2_checkpoint.is_file():
            parser.error(
                f"SAM2 checkpoint {args.sam2_checkpoint} does not exist (download it from the SAM2 release)"
            )
        if args.workers > 1:
            args.workers = 1  # one SAM2 model per process would not fit a GPU many times over
    return args


def main(argv: list[str] | None = None) -> int:
    times = prep_times("data_prep.ssv2", argv)
    args = parse_args(argv)
    try:
        part = resolve_part(args.part)
    except PartSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    times.add(STARTUP, times.total())
    listing = times.total()
    try:
        videos = _find_dir(args.root, args.videos, VIDEO_DIRS, "videos", "*.webm")
        labels_dir = _find_dir(args.root, args.labels, LABEL_DIRS, "labels", "something-something-v2-*.json")
        if not args.boxes.is_dir():
            raise SSV2InputError(f"the Something-Else folder {args.boxes} does not exist")
        box_files = sorted(args.boxes.glob(BOX_FILES))
        if not box_files:
            raise SSV2InputError(f"no {BOX_FILES} in {args.boxes} (the Something-Else box annotations)")
        labels = load_labels(labels_dir, LABEL_FILES)
        split_ids = _split_ids(args, labels, labels_dir)
        print(f"reading Something-Else boxes from {len(box_files)} file(s) ...", flush=True)
        boxes = load_boxes(box_files, {v for ids in split_ids.values() for v in ids})
        sam2 = _sam2_settings(args, part)
    except SSV2InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    times.add(f"{LISTING} (labels, boxes)", times.total() - listing)
    settings = {
        # the inputs as files: adding a Something-Else part or another checkpoint changes the plan
        "inputs": _file_stamps([*box_files, *(labels_dir / n for n in LABEL_FILES.values())])
        | (_file_stamps([args.sam2_checkpoint]) if sam2 else {}),
        "masks": args.masks,
        "max_gap": args.max_gap,
    }
    if sam2:
        settings |= {
            "sam2_config": args.sam2_config,
            "sam2_prompt_every": args.sam2_prompt_every,
            "sam2_overrides": args.sam2_override,
        }
    provenance = {
        "preparer": "data_prep.ssv2",
        "videos": str(videos),
        "labels": str(labels_dir),
        "boxes": [str(p) for p in box_files],
        "sam2_checkpoint": str(args.sam2_checkpoint) if sam2 else None,
    }
    code = 0
    for split, ids in split_ids.items():
        items = [Item(v, (labels.get(v), boxes.get(v))) for v in ids]
        maker = SSV2Maker(
            str(videos),
            split,
            args.masks,
            args.num_frames,
            args.target_fps,
            args.frame_stride,
            args.max_gap,
            sam2,
        )
        code = run_split(args, "ssv2", split, items, maker, settings, provenance, part, times=times)
        if code:
            break
    times.show()
    return code


def _split_ids(
    args: argparse.Namespace, labels: dict[str, tuple[str, dict[str, Any]]], labels_dir: Path
) -> dict[str, list[str]]:
    """The sorted video ids of every split to write: from ``--ids SPLIT=FILE`` or the split's label file;
    ids of the other written splits leave train; ``--limit`` keeps the first ones."""
    bad = [spec for spec in args.ids if "=" not in spec or not spec.split("=", 1)[0]]
    if bad:
        raise SSV2InputError(f"--ids takes SPLIT=FILE (e.g. test=eval_ids.txt), got {bad[0]!r}")
    explicit = dict(spec.split("=", 1) for spec in args.ids)
    split_ids: dict[str, list[str]] = {}
    for split in dict.fromkeys([*args.splits, *explicit]):
        if split in explicit:
            split_ids[split] = read_id_list(Path(explicit[split]))
        elif split in LABEL_FILES:
            if not (labels_dir / LABEL_FILES[split]).is_file():
                raise SSV2InputError(
                    f"{labels_dir / LABEL_FILES[split]} is missing (needed for split {split})"
                )
            split_ids[split] = [vid for vid, (s, _) in labels.items() if s == split]
        else:
            raise SSV2InputError(f"split {split!r} has no label file; give its ids with --ids {split}=FILE")
    if "train" in split_ids:
        held_out = {v for s, ids in split_ids.items() if s != "train" for v in ids}
        split_ids["train"] = [v for v in split_ids["train"] if v not in held_out]
    return {
        split: sorted(set(ids), key=lambda v: (len(v), v))[: args.limit] for split, ids in split_ids.items()
    }


def _sam2_settings(args: argparse.Namespace, part: Part) -> Sam2Settings | None:
    """SAM2's settings with ``--masks sam2`` (None with boxes), the predictor built now unless this run
    only finalizes: a bad checkpoint must stop the run, not skip every video."""
    if args.masks != "sam2":
        return None
    sam2 = Sam2Settings(
        checkpoint=str(args.sam2_checkpoint),
        config=args.sam2_config,
        device=part_device(part, args.device),  # LOCAL_RANK's GPU under torchrun / srun
        prompt_every=args.sam2_prompt_every,
        hydra_overrides=list(args.sam2_override),
    )
    if not args.finalize:
        try:
            sam2_predictor(sam2)
        except SSV2InputError:
            raise
        except Exception as err:  # noqa: BLE001 - hydra/torch errors of a wrong config or checkpoint
            raise SSV2InputError(
                f"cannot build SAM2 from {args.sam2_checkpoint} with {args.sam2_config}: {err}"
            ) from None
    return sam2


if __name__ == "__main__":
    sys.exit(main())
