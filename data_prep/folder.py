"""Your own clips -> shards: one folder per clip with a video and its masks.

    my_clips/
      243/
        video.mp4              # any container/codec PyAV reads, any fps and size
        mask_hand.mp4          # the driver: a mask video, or a folder of mask images
        mask_cup/              #   (0000.png, 0001.png, ...) - other objects, kept for evaluation
      244/ ...

``video.*`` is the RGB video (a folder ``video/`` of frame images also works, with ``--fps``). The
driver masks are ``mask_<control>.*`` (``--control hand`` by default; several names are merged);
every other ``mask_<name>.*`` becomes a per-object mask. Masks are binarised (threshold on the
brightest channel, specks smaller than ``--min_blob`` pixels removed) and resized (nearest) when they
have the video's aspect ratio but another size.

Masks and video start together at frame 0 but need not have the same length (in the authors' released
examples the hand mask and the video have 28 frames, the object masks 37 to 68): a mask longer than the
video is cut at the video's end; a driver mask shorter than the video cuts the clip to its length; an
object mask shorter than the clip is padded with empty frames (``--short_objects drop`` leaves it out).
Each case is counted in ``report.json`` (``mask_lengths``) and recorded in the sample's json. Only a clip
that cannot give one clip of ``--num_frames`` frames is skipped. A split in which no clip became a sample
is an error (exit code 2, with the reasons).

Videos in mp4 or webm are stored as they are; anything else (or a frame folder) is re-encoded to
H.264 (odd sizes are padded by one pixel row/column of edge colour, and the masks with it).

    python -m data_prep.folder --input my_clips/ --out data/shards/mine
    python -m data_prep.folder --input my_clips/ --out data/shards/mine --val_fraction 0.1 --test_fraction 0.1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tarfile
from collections import Counter
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
    count_video,
    prep_times,
    read_video,
    run_split,
)
from interdyn.commands.spelling import ScriptParser
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.media import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    MediaError,
    binarize,
    natural_key,
)
from interdyn.data.shard_format import SkipSample, encode_masks
from interdyn.data.video import encode_video
from interdyn.inputs.files import FolderError, iter_media_frames, read_image_folder
from interdyn.utils.files import write_atomic

KEEP_AS_IS = {".mp4": "video.mp4", ".webm": "video.webm"}
_NAME_RE = re.compile(r"[^A-Za-z0-9_\-]+")


def find_media(folder: Path, stem: str) -> Path | None:
    """``<stem>.<video suffix>`` or a folder ``<stem>/`` holding images, else None."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.stem == stem and path.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
            return path
        if path.is_dir() and path.name == stem:
            return path
    return None


def read_images(folder: Path) -> np.ndarray:
    """A folder of images (natural order) -> ``(T, H, W, 3)`` uint8; raises :class:`SkipSample` when unusable."""
    try:
        return read_image_folder(folder)
    except FolderError as err:
        if err.kind == "empty":
            raise SkipSample("missing_video", f"{folder} holds no images") from None
        detail = f"{err.path}: {err}" if err.kind == "unreadable" else f"{folder}: images of different sizes"
        raise SkipSample("corrupt_video", detail) from None


def read_mask(path: Path, threshold: int, min_blob: int) -> np.ndarray:
    """Mask video / image folder / single image -> bool ``(T, H, W)``, binarised frame by frame (a mask
    video never sits in memory as RGB)."""
    if not path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES and not path.stat().st_size:
        raise SkipSample("corrupt_video", f"{path} is empty")
    try:
        masks = [binarize(f[None], threshold, min_blob)[0] for f in iter_media_frames(path)]
    except MediaError as err:  # an image that cannot be read, a mask video that cannot be decoded
        raise SkipSample("corrupt_video", f"{getattr(err, 'path', path)}: {err}") from None
    if not masks:
        raise SkipSample("missing_masks", f"{path} holds no frames")
    if len({m.shape for m in masks}) != 1:
        raise SkipSample("mask_size_mismatch", f"{path}: frames of different sizes")
    return np.stack(masks)


def fit_mask(masks: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    """Resize bool masks ``(T, h, w)`` to the video's size when only the scale differs."""
    t, h, w = masks.shape
    if (h, w) == (height, width):
        return masks
    if abs(h / w - height / width) > 0.01:
        raise SkipSample(
            "mask_size_mismatch", f"mask_{name} is {w}x{h}, the video {width}x{height} (other aspect ratio)"
        )
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return masks[:, rows][:, :, cols]


LENGTH_CASES = ("mask_cut", "clip_cut_to_driver", "object_padded", "object_dropped")


def align_mask_lengths(
    masks: dict[str, np.ndarray], driver_names: list[str], num_frames: int, short_objects: str = "pad"
) -> tuple[dict[str, np.ndarray], int, dict[str, list[str]]]:
    """Bring masks of other lengths to one clip length (all start at frame 0).

    A mask longer than the video is cut at the video's end (``mask_cut``); a driver mask shorter than the
    video cuts the clip to its length (``clip_cut_to_driver``); an object mask shorter than the clip is
    padded with empty frames (``object_padded``) or, with ``short_objects="drop"``, left out
    (``object_dropped``). Returns the masks, the clip length and ``{case: [mask names]}`` for the cases met.
    """
    cases: dict[str, list[str]] = {}
    t = num_frames
    for name in driver_names:
        if len(masks[name]) < t:
            cases.setdefault("clip_cut_to_driver", []).append(name)
            t = len(masks[name])
    out: dict[str, np.ndarray] = {}
    for name, m in masks.items():
        if len(m) > t:
            if len(m) > num_frames:
                cases.setdefault("mask_cut", []).append(name)
            m = m[:t]
        elif len(m) < t:  # only objects: drivers set t
            if short_objects == "drop":
                cases.setdefault("object_dropped", []).append(name)
                continue
            cases.setdefault("object_padded", []).append(name)
            m = np.concatenate([m, np.zeros((t - len(m), *m.shape[1:]), dtype=bool)])
        out[name] = m
    return out, t, cases


def is_utf8(name: str) -> bool:
    """Whether a file name read from the disk was valid UTF-8 (Python keeps other bytes as surrogates,
    which the shards' json and tar names cannot hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A file name as text that UTF-8 can hold: bytes that were not UTF-8 shown as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_of(clip_id: str, val_fraction: float, test_fraction: float, default: str) -> str:
    """A stable split from the clip id's hash (the same clip always lands in the same split)."""
    # surrogateescape: a folder name that is not UTF-8 still hashes (its clip is skipped by the maker)
    u = int(hashlib.sha1(clip_id.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "validation"
    return default


@dataclass
class FolderMaker:
    """Turns one clip folder into a shard sample."""

    dataset: str
    split: str
    control: tuple[str, ...] = ("hand",)
    fps: float | None = None
    threshold: int = 128
    min_blob: int = 4
    num_frames: int = PAPER_CLIP.num_frames
    target_fps: float | None = PAPER_CLIP.fps
    frame_stride: int | None = None
    short_objects: str = "pad"

    def __call__(self, item: Item) -> tuple[str, dict[str, Any]]:
        folder = Path(item.data)
        if not is_utf8(folder.name):
            shown = printable_name(folder.name)
            raise SkipSample("name_not_utf8", f"the clip folder name '{shown}' is not UTF-8; rename it")
        video_path, data, frames, fps, (t, h, w) = self._read_video(folder)
        masks, driver_names = self._read_masks(folder, t, h, w)
        masks, t, lengths = align_mask_lengths(masks, driver_names, t, self.short_objects)
        if frames is not None:
            frames = frames[:t]
        check_length(t, fps, self.num_frames, self.target_fps, self.frame_stride)
        control = np.zeros((t, h, w), dtype=bool)
        for name in driver_names:
            control |= masks[name]
        if not control.any():
            raise SkipSample(
                "empty_masks", f"the driver masks ({', '.join(driver_names)}) are empty in every frame"
            )
        object_names = [n for n in masks if n not in driver_names]

        if data is None:
            ph, pw = h % 2, w % 2  # libx264 needs even sizes: pad one edge row/column
            if ph or pw:
                frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
                control = np.pad(control, ((0, 0), (0, ph), (0, pw)))
                masks = {n: np.pad(m, ((0, 0), (0, ph), (0, pw))) for n, m in masks.items()}
                h, w = h + ph, w + pw
            video_field, data = "video.mp4", encode_video(frames, fps)
        else:
            video_field = KEEP_AS_IS[video_path.suffix.lower()]
        objects = np.stack([masks[n] for n in object_names]) if object_names else None
        clip_id = _NAME_RE.sub("_", folder.name)
        meta = {
            "id": folder.name,
            "dataset": self.dataset,
            "split": self.split,
            "fps": fps,
            "num_frames": t,
            "height": h,
            "width": w,
            "label": "",
            "template": "",
            "objects": object_names,
            "mask_source": "user",
            "control": driver_names,
            "source": str(folder),
            "mask_lengths": lengths,
        }
        return f"{self.dataset}-{clip_id}", {
            video_field: data,
            "masks.npz": encode_masks(control, objects, object_names or None),
            "json": meta,
        }

    def _read_video(
        self, folder: Path
    ) -> tuple[Path, bytes | None, np.ndarray | None, float, tuple[int, int, int]]:
        """The clip's ``video.*``: its path, its bytes when it is stored as it is (else None), its frames
        when they are re-encoded (else None), its frame rate (``fps`` wins) and ``(T, H, W)``."""
        video_path = find_media(folder, "video")
        if video_path is None:
            raise SkipSample("missing_video", f"no video.* in {folder}")
        if video_path.is_dir():
            if not self.fps:
                raise SkipSample("missing_fps", f"{video_path} is a frame folder: pass --fps")
            data, frames, fps = None, read_images(video_path), float(self.fps)
            t, h, w, _ = frames.shape
        elif video_path.suffix.lower() in KEEP_AS_IS:  # stored as it is: only count the frames
            data, t, fps, h, w = count_video(video_path)
            frames, fps = None, float(self.fps or fps)
        else:
            _, frames, fps = read_video(video_path)
            data, fps = None, float(self.fps or fps)
            t, h, w, _ = frames.shape
        return video_path, data, frames, fps, (t, h, w)

    def _read_masks(self, folder: Path, t: int, h: int, w: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Every ``mask_<name>.*`` of the clip, fitted to the video's ``H x W`` (a still image repeated over
        its ``t`` frames), and the names of the drivers among them (at least one, or the clip is skipped)."""
        mask_paths = {
            p.stem[len("mask_") :] if p.is_file() else p.name[len("mask_") :]: p
            for p in sorted(folder.iterdir())
            if p.name.startswith("mask_")
            and (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES)
        }
        driver_names = [n for n in self.control if n in mask_paths]
        if not driver_names:
            wanted = ", ".join(f"mask_{n}.*" for n in self.control)
            raise SkipSample("missing_masks", f"no {wanted} in {folder}")
        masks: dict[str, np.ndarray] = {}
        for name, path in mask_paths.items():
            m = read_mask(path, self.threshold, self.min_blob)
            if m.shape[0] == 1 and t > 1 and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                m = np.repeat(m, t, axis=0)  # one still image: the same mask on every frame
            masks[name] = fit_mask(m, h, w, name)
        return masks, driver_names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ScriptParser(
        prog="python -m data_prep.folder",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", type=Path, required=True, help="folder with one subfolder per clip")
    parser.add_argument("--name", default="folder", help="dataset name (shard and key prefix)")
    parser.add_argument(
        "--control", nargs="+", default=["hand"], help="mask names that are the driver (mask_<name>.*)"
    )
    parser.add_argument("--split", default="train", help="split of the clips not drawn for validation/test")
    parser.add_argument(
        "--val_fraction", type=float, default=0.0, help="share of clips for validation (by id hash)"
    )
    parser.add_argument(
        "--test_fraction", type=float, default=0.0, help="share of clips for test (by id hash)"
    )
    parser.add_argument(
        "--fps", type=float, default=None, help="override the frame rate (required for frame folders)"
    )
    parser.add_argument(
        "--threshold", type=int, default=128, help="mask threshold, 1-255 on the brightest channel"
    )
    parser.add_argument("--min_blob", type=int, default=4, help="drop mask specks smaller than this (pixels)")
    parser.add_argument(
        "--short_objects",
        choices=("pad", "drop"),
        default="pad",
        help="an object mask shorter than the clip: pad it with empty frames or leave the object out",
    )
    add_common_arguments(parser, "data/shards/folder")
    return parser.parse_args(argv)


def _clip_folders(args: argparse.Namespace) -> list[Path]:
    """The clip folders of ``--input`` in natural order; ValueError (one sentence) when the input, the
    dataset name or the folder names cannot make a dataset."""
    if not args.input.is_dir():
        raise ValueError(f"input folder {args.input} does not exist")
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.name):
        raise ValueError("--name may hold only letters, digits and '_'")
    if not 1 <= args.threshold <= 255:
        raise ValueError(
            f"--threshold must be from 1 to 255 (0 or less makes every pixel a driver), got {args.threshold}"
        )
    clips = sorted((p for p in args.input.iterdir() if p.is_dir()), key=natural_key)
    if not clips:
        raise ValueError(f"{args.input} has no clip folders (one folder per clip: video.* + mask_*.*)")
    if len({_NAME_RE.sub("_", c.name) for c in clips}) != len(clips):
        raise ValueError("clip folder names collide once reduced to letters, digits, '-' and '_'")
    return clips


def main(argv: list[str] | None = None) -> int:
    times = prep_times("data_prep.folder", argv)
    args = parse_args(argv)
    times.add(STARTUP, times.total())
    try:
        with times.phase(f"{LISTING} (clip folders)"):
            clips = _clip_folders(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits: dict[str, list[Item]] = {}
    for clip in clips:
        split = split_of(clip.name, args.val_fraction, args.test_fraction, args.split)
        # the item's id goes into the split's records: a name that is not UTF-8 is shown escaped there
        splits.setdefault(split, []).append(Item(printable_name(clip.name), str(clip)))
    code = 0
    for split, items in splits.items():
        items = items[: args.limit]
        maker = FolderMaker(
            args.name,
            split,
            tuple(args.control),
            args.fps,
            args.threshold,
            args.min_blob,
            args.num_frames,
            args.target_fps,
            args.frame_stride,
            args.short_objects,
        )
        settings = {
            "control": args.control,
            "fps": args.fps,
            "threshold": args.threshold,
            "min_blob": args.min_blob,
            "fractions": [args.val_fraction, args.test_fraction],
            "short_objects": args.short_objects,
        }
        provenance = {"preparer": "data_prep.folder", "input": str(args.input)}
        # the mask-length counts go into report.json once the split is indexed (by this part or --finalize)
        code = run_split(
            args,
            args.name,
            split,
            items,
            maker,
            settings,
            provenance,
            on_finalized=finish_report,
            times=times,
        )
        if code:
            break
    times.show()
    return code


def finish_report(folder: Path, split: str) -> int:
    """Count the mask-length cases of the split's samples into ``report.json`` and print them; a split
    without any sample is an error (exit code 2, with the reasons the clips were skipped)."""
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text())
    counts: Counter = Counter()
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    for case, names in (meta.get("mask_lengths") or {}).items():
                        counts[case] += len(names)
    report["mask_lengths"] = {case: counts.get(case, 0) for case in LENGTH_CASES}
    write_atomic(report_path, json.dumps(report, indent=2).encode())
    if any(counts.values()):
        shown = ", ".join(f"{case} {n}" for case, n in report["mask_lengths"].items() if n)
        print(f"{split}: masks of other lengths than their video: {shown} (report.json: mask_lengths)")
    if not report.get("samples"):
        reasons = ", ".join(f"{reason} {n}" for reason, n in report.get("skipped", {}).items()) or "none"
        print(
            f"error: no clip of split '{split}' became a sample ({report.get('items', 0)} clips; skipped: "
            f"{reasons}); see {report_path}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
