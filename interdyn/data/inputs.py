"""Inputs of ``interdyn generate``: an image (or a clip folder) and driver masks from user files.

Control masks come from a mask video, a folder of mask images, a single mask image (the same mask on
every frame) or a ``.npz`` array. Whatever their size and frame rate, they are brought to the model's
clip as the authors' demo brings its examples: every n-th frame from the first, with the uniform stride
nearest the target rate (every 2nd frame of 12 fps for "7 FPS", :mod:`interdyn.data.sampling`), then
resized and cropped with :func:`interdyn.data.transforms.joint_transform` (centre crop by default, as the
demo; the mask-aware window of training as an option). Every problem with a user's file is an
:class:`~interdyn.errors.InputError` with one sentence saying what is wrong.

A clip folder holds ``video.*`` (a video file, or a folder ``video/`` of frame images) and one or more
``mask_<name>.*`` (as :mod:`data_prep.folder` expects, e.g. the authors' ``examples/<id>/``); the video's
frames at the same positions are the ground truth. Masks need not have the video's length: a longer mask
is cut at the video's end (both start at frame 0), a shorter driver mask cuts the clip to its length.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from interdyn.data.sampling import (
    FRAME_SAMPLINGS,
    clip_offsets,
    describe_timing,
    effective_fps,
    valid_starts,
)
from interdyn.data.transforms import CROPS, joint_transform, resize_to_cover
from interdyn.data.video import VideoDecodeError, decode_frames, probe_video
from interdyn.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif"}
FOLDER_FPS = 7.0  # frame rate assumed for image folders and .npz files without an ``fps`` entry
NPZ_KEYS = ("control", "masks", "mask")


@dataclass
class MaskSource:
    """Binary driver masks as read from a file, at the file's own frame rate."""

    masks: np.ndarray  # (T, H, W) bool
    fps: float | None  # None: the file carries no frame rate
    still: bool = False  # a single mask image, to be repeated over the clip


@dataclass
class GenerationInputs:
    """Everything the sampler needs, at the model's resolution."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8: the first frame
    controls: list[np.ndarray]  # one (T, H, W) bool array per control sequence
    labels: list[str]  # one short name per control sequence
    truth: np.ndarray | None  # (T, H, W, 3) uint8 ground truth (clip folders only)
    fps: float  # playback rate of the clips (the rate actually taken, e.g. 6 for every 2nd frame of 12 fps)
    notes: list[str] = field(default_factory=list)  # how the inputs were resampled and cropped
    source_frames: list[int] = field(default_factory=list)  # the source frames taken (first control / clip)
    timing: str = ""  # e.g. "every 2nd frame of 12 fps = 6 fps (uniform stride nearest 7 FPS)"


# ---------------------------------------------------------------------------- reading files
def _natural_key(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def _short_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200].rstrip(".")


def _open_image(path: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"cannot read {what} '{path}' ({_short_reason(err)}).") from None


def _read_video_file(path: Path, what: str) -> tuple[np.ndarray, float | None]:
    """Every frame ``(T, H, W, 3)`` uint8 of a video file and its frame rate (None when unknown)."""
    data = path.read_bytes()
    if not data:
        raise InputError(f"cannot read {what} '{path}' (the file is empty).")
    try:
        _, fps, _, _ = probe_video(data)
        frames = decode_frames(data)
    except VideoDecodeError as err:
        raise InputError(f"cannot read {what} '{path}' ({_short_reason(err)}).") from None
    return frames, (fps if fps and math.isfinite(fps) and fps > 0 else None)


def read_image(path: str | Path) -> np.ndarray:
    """An image file (or the first frame of a video file) -> ``(H, W, 3)`` uint8 RGB."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"the image '{path}' does not exist.")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            return decode_frames(path.read_bytes(), [0])[0]
        except VideoDecodeError as err:
            raise InputError(f"cannot read the image '{path}' ({_short_reason(err)}).") from None
    return _open_image(path, "the image")


def binarize(array: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Mask values -> bool: ``(..., H, W)`` or ``(..., H, W, C)`` (the brightest colour channel counts).

    Booleans are kept; an integer array whose values are all 0 or 1 is taken as it is; other values are
    compared with ``threshold`` on a 0-255 scale (floats up to 1 are scaled by 255), which also removes
    the grey halos of lossy mask videos. Call it on a whole sequence, not frame by frame, so that a dark
    frame of a 0-255 video is not mistaken for a 0/1 mask."""
    array = np.asarray(array)
    if array.ndim >= 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].max(axis=-1)
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() <= 1:
        return array > 0
    scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0 else 1.0
    return array.astype(np.float32) * scale >= threshold


def _threshold(frame: np.ndarray, threshold: int) -> np.ndarray:
    """One decoded RGB video frame -> bool (always thresholded on the brightest channel)."""
    return frame.max(axis=-1) >= threshold


def _iter_mask_video(path: Path) -> Iterator[np.ndarray]:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise InputError(f"cannot read the control '{path}' ({_short_reason(err)}).") from None


def _video_fps(path: Path) -> float | None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    return fps if math.isfinite(fps) and fps > 0 else None


def _npz_fps(path: Path, value: np.ndarray) -> float:
    """The ``fps`` entry of a mask ``.npz``: one finite positive number, else an InputError."""
    try:
        fps = float(np.asarray(value).reshape(-1)[0]) if np.size(value) == 1 else math.nan
    except (TypeError, ValueError):
        fps = math.nan
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(
            f"the control '{path}' has fps {np.asarray(value).tolist()!r}; it must be one positive number."
        )
    return fps


def _read_npz(path: Path, threshold: int) -> MaskSource:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read the control '{path}' ({_short_reason(err)}).") from None
    fps = _npz_fps(path, arrays.pop("fps")) if "fps" in arrays else None
    key = next((k for k in NPZ_KEYS if k in arrays), None)
    if key is None and len(arrays) == 1:
        key = next(iter(arrays))
    if key is None:
        raise InputError(
            f"the control '{path}' holds arrays {sorted(arrays)}; name the masks 'control' (shape T x H x W)."
        )
    masks = arrays[key]
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 4 and masks.shape[-1] in (1, 3, 4):
        masks = masks[..., 0] if masks.shape[-1] == 1 else masks
    if masks.ndim not in (3, 4):
        raise InputError(
            f"the control '{path}' has masks of shape {masks.shape}; expected (frames, height, width)."
        )
    return MaskSource(binarize(masks, threshold), fps)


def read_masks(path: str | Path, threshold: int = 128) -> MaskSource:
    """Driver masks from a mask video, a folder of mask images, a single mask image or a ``.npz``
    (array ``control``, ``masks`` or the only one; optional scalar ``fps``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"the control '{path}' does not exist.")
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise InputError(
                f"the control folder '{path}' holds no mask images ({', '.join(sorted(IMAGE_SUFFIXES))})."
            )
        images = [_open_image(p, "the mask image") for p in files]
        if len({m.shape for m in images}) != 1:
            raise InputError(f"the mask images in '{path}' do not all have the same size.")
        return MaskSource(binarize(np.stack(images), threshold), None)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, threshold)
    if suffix in IMAGE_SUFFIXES:
        return MaskSource(binarize(_open_image(path, "the control"), threshold)[None], None, still=True)
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(
            f"the control '{path}' is neither a mask video, a folder of mask images, a mask image nor a .npz."
        )
    if not path.stat().st_size:
        raise InputError(f"cannot read the control '{path}' (the file is empty).")
    masks = [_threshold(frame, threshold) for frame in _iter_mask_video(path)]
    if not masks:
        raise InputError(f"cannot read the control '{path}' (it has no frames).")
    return MaskSource(np.stack(masks), _video_fps(path))


# ---------------------------------------------------------------------------- clip frames
def frame_indices(
    num_source: int,
    source_fps: float,
    num_frames: int,
    fps: float,
    frame_stride: int | None = None,
    start: int = 0,
    what: str = "the control",
    frame_sampling: str = "uniform",
) -> np.ndarray:
    """Source frames of the clip: ``num_frames`` at ``fps`` (the uniform stride nearest ``fps``, or the
    nearest frame by timestamp with ``frame_sampling="timestamp"``) or every ``frame_stride``-th frame, from
    ``start``. Raises an InputError when the source is too short."""
    offsets = clip_offsets(num_frames, source_fps, fps, frame_stride, frame_sampling)
    if start not in valid_starts(num_source, offsets):
        need = start + int(offsets[-1]) + 1
        rate = f"a stride of {frame_stride}" if frame_stride else f"{fps:g} FPS"
        since = f" from frame {start}" if start else ""
        raise InputError(
            f"{what} has {num_source} frames at {source_fps:g} fps, but {num_frames} frames at {rate}{since} "
            f"need {need} source frames."
        )
    return start + offsets


def _describe_indices(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:8])
    return shown + (", ..." if len(indices) > 8 else "")


def _check_mask_size(masks: np.ndarray, height: int, width: int, what: str, against: str) -> None:
    mh, mw = masks.shape[-2:]
    if (mh, mw) != (height, width):
        raise InputError(
            f"{what} is {mw}x{mh} pixels but {against} is {width}x{height}; the masks must have the same size."
        )


def _resample_control(
    label: str,
    source: MaskSource,
    num_frames: int,
    fps: float,
    frame_stride: int | None,
    start: int,
    control_fps: float | None,
    notes: list[str],
    frame_sampling: str = "uniform",
) -> tuple[np.ndarray, float, np.ndarray]:
    """A control's masks at the clip's timestamps and the source frame rate used, with a note saying
    which frames were taken."""
    what = f"the control '{label}'"
    if not source.masks.any():
        raise InputError(
            f"{what} is empty: none of its {len(source.masks)} frames has a mask pixel (a driver pixel "
            "is one whose brightest channel reaches --threshold)."
        )
    if source.still:
        notes.append(f"control '{label}': one mask image, repeated over {num_frames} frames")
        return np.repeat(source.masks, num_frames, axis=0), float(control_fps or FOLDER_FPS), np.zeros(0, int)
    source_fps = float(control_fps or source.fps or FOLDER_FPS)
    origin = (
        "--control_fps"
        if control_fps
        else ("its own rate" if source.fps else "assumed for image folders / .npz")
    )
    indices = frame_indices(
        len(source.masks), source_fps, num_frames, fps, frame_stride, start, what, frame_sampling
    )
    notes.append(
        f"control '{label}': {len(source.masks)} frames at {source_fps:g} fps ({origin}) -> {num_frames} "
        f"frames, {describe_timing(source_fps, fps, frame_stride, frame_sampling)} "
        f"(source frames {_describe_indices(indices)})"
    )
    return source.masks[indices], source_fps, indices


def _geometry_note(
    source_hw: tuple[int, int], geometry: tuple, height: int, width: int, crop: str, crop_given: bool
) -> str:
    sy, sx, top, left, _ = geometry
    rh, rw = round(source_hw[0] * sy), round(source_hw[1] * sx)
    how = (
        ""
        if crop_given
        else " (default, as the authors' demo; --crop mask_aware centres the window on the masks)"
    )
    return (
        f"geometry: {source_hw[1]}x{source_hw[0]} resized to {rw}x{rh}, {crop} crop{how} of {width}x{height} "
        f"at x={left}, y={top}"
    )


def _check_crop(control: np.ndarray, label: str, crop: str) -> None:
    if not control.any():
        hint = " (try --crop mask_aware)" if crop != "mask_aware" else ""
        raise InputError(
            f"the control '{label}' has no mask pixel left in the selected frames after the {crop} crop{hint}."
        )


def _check_options(
    height: int,
    width: int,
    crop: str,
    num_frames: int,
    fps: float,
    frame_stride: int | None,
    start: int,
    control_fps: float | None = None,
    frame_sampling: str = "uniform",
) -> None:
    if crop not in ("center", "mask_aware"):
        raise InputError(f"--crop must be 'center' or 'mask_aware', got '{crop}' (known crops: {CROPS}).")
    if height <= 0 or width <= 0 or height % 8 or width % 8:
        raise InputError(f"--height and --width must be positive multiples of 8, got {height}x{width}.")
    if num_frames < 1 or not (math.isfinite(fps) and fps > 0):
        raise InputError(f"--num_frames and --fps must be positive, got {num_frames} and {fps:g}.")
    if control_fps is not None and not (math.isfinite(control_fps) and control_fps > 0):
        raise InputError(
            f"--control_fps must be a positive number of frames per second, got {control_fps:g}."
        )
    if frame_sampling not in FRAME_SAMPLINGS:
        raise InputError(
            f"--frame_sampling must be one of {', '.join(FRAME_SAMPLINGS)}, got '{frame_sampling}'."
        )
    if (frame_stride is not None and frame_stride < 1) or start < 0:
        raise InputError(
            f"--frame_stride must be at least 1 and --start at least 0, got {frame_stride} and {start}."
        )


def _unique_labels(paths: list[Path]) -> list[str]:
    labels: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_\-]+", "_", path.stem if path.is_file() else path.name) or "control"
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


# ---------------------------------------------------------------------------- the two input modes
def load_image_inputs(
    image: str | Path,
    controls: list[str | Path],
    num_frames: int = 14,
    fps: float = 7.0,
    height: int = 256,
    width: int = 384,
    crop: str = "center",
    frame_stride: int | None = None,
    start: int = 0,
    control_fps: float | None = None,
    threshold: int = 128,
    name: str | None = None,
    crop_given: bool = True,
    frame_sampling: str = "uniform",
) -> GenerationInputs:
    """An image and one or more control sequences (several: counterfactuals of the same image).

    With several controls the mask-aware crop is centred on the union of all of them, so that every
    sequence sees the same crop of the image.
    """
    _check_options(height, width, crop, num_frames, fps, frame_stride, start, control_fps, frame_sampling)
    if not controls:
        raise InputError(
            "--image needs at least one --control (a mask video, a folder of mask images or a .npz)."
        )
    image_path = Path(image).expanduser()
    picture = read_image(image_path)
    paths = [Path(c).expanduser() for c in controls]
    labels = _unique_labels(paths)
    notes: list[str] = []
    clips, rates, taken = [], [], []
    for label, path in zip(labels, paths, strict=True):
        source = read_masks(path, threshold)
        _check_mask_size(
            source.masks, *picture.shape[:2], f"the control '{label}'", f"the image '{image_path.name}'"
        )
        clip, rate, indices = _resample_control(
            label, source, num_frames, fps, frame_stride, start, control_fps, notes, frame_sampling
        )
        clips.append(clip)
        rates.append(rate)
        taken.append(indices)

    # One crop window for the image and every control: joint_transform on the image with the union of
    # all masks (what mask_aware centres on), then the same resize and window for each sequence.
    union = np.logical_or.reduce([c.any(axis=0) for c in clips])
    frame_t, _, geometry = joint_transform(
        picture[None], union[None], height, width, crop, with_geometry=True
    )
    top, left = geometry[2], geometry[3]
    image_t = torch.from_numpy(picture).permute(2, 0, 1)[None]
    fitted = []
    for label, clip in zip(labels, clips, strict=True):
        _, resized = resize_to_cover(image_t, torch.from_numpy(clip), height, width)
        window = resized[:, top : top + height, left : left + width].numpy()
        _check_crop(window, label, crop)
        fitted.append(window)
    notes.append(_geometry_note(picture.shape[:2], geometry, height, width, crop, crop_given))
    _note_first_frame(fitted, labels, notes)
    return GenerationInputs(
        name=name or image_path.stem,
        image=frame_t[0].permute(1, 2, 0).numpy(),
        controls=fitted,
        labels=labels,
        truth=None,
        fps=effective_fps(rates[0], fps, frame_stride, frame_sampling),
        notes=notes,
        source_frames=[int(i) for i in taken[0]],
        timing=describe_timing(rates[0], fps, frame_stride, frame_sampling),
    )


def _note_first_frame(controls: list[np.ndarray], labels: list[str], notes: list[str]) -> None:
    for control, label in zip(controls, labels, strict=True):
        if not control[0].any():
            notes.append(
                f"note: the driver of '{label}' is not visible in the first frame (fine for objects that enter "
                "the scene; hand models expect the hand in frame 0)"
            )


def find_clip_parts(folder: Path, control_name: str | None) -> tuple[Path, Path, str]:
    """``(video, mask, mask name)`` of a clip folder: ``video.*`` and ``mask_<name>.*``."""
    video = next(
        (
            p
            for p in sorted(folder.iterdir())
            if p.stem == "video" and (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES)
        ),
        None,
    )
    if video is None:
        raise InputError(
            f"the clip folder '{folder}' has no video.* (a video file such as video.mp4, or a folder video/ of frames)."
        )
    masks = {
        (p.name if p.is_dir() else p.stem)[len("mask_") :]: p
        for p in sorted(folder.iterdir())
        if p.name.startswith("mask_")
        and (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES | {".npz"})
    }
    if not masks:
        raise InputError(
            f"the clip folder '{folder}' has no mask_<name>.* (a mask video, a folder of mask images or a .npz)."
        )
    if control_name is None:
        if "hand" in masks:
            control_name = "hand"
        elif len(masks) == 1:
            control_name = next(iter(masks))
        else:
            raise InputError(
                f"the clip folder '{folder}' has several masks ({', '.join(sorted(masks))}); pick one with --control_name."
            )
    if control_name not in masks:
        raise InputError(
            f"the clip folder '{folder}' has no mask_{control_name}.* (it has: {', '.join(sorted(masks))})."
        )
    return video, masks[control_name], control_name


def _align_lengths(
    frames: np.ndarray, masks: np.ndarray, label: str, video_name: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A driver mask and its video start together at frame 0: a longer mask is cut at the video's end, a
    shorter one cuts the video to its length (the authors' examples have object masks longer than the
    video)."""
    if len(masks) > len(frames):
        notes.append(f"{label} has {len(masks)} frames, the video {len(frames)}: cut at the video's end")
        return frames, masks[: len(frames)]
    if len(masks) < len(frames):
        notes.append(
            f"{label} has {len(masks)} frames, the video '{video_name}' {len(frames)}: the clip ends with the mask"
        )
        return frames[: len(masks)], masks
    return frames, masks


def load_clip_inputs(
    folder: str | Path,
    control_name: str | None = None,
    num_frames: int = 14,
    fps: float = 7.0,
    height: int = 256,
    width: int = 384,
    crop: str = "center",
    frame_stride: int | None = None,
    start: int = 0,
    control_fps: float | None = None,
    threshold: int = 128,
    name: str | None = None,
    crop_given: bool = True,
    frame_sampling: str = "uniform",
) -> GenerationInputs:
    """A clip folder: its first selected frame is the image, its mask the control, its frames the
    ground truth (the same frames, resized and cropped together with the masks).

    The defaults are the authors' demo preprocessing of their ``examples/<id>/`` folders: every 2nd frame
    of 12 fps from frame 0, resize (short side) then torchvision's centre crop to 256x384, masks resized
    with torchvision's NEAREST."""
    _check_options(height, width, crop, num_frames, fps, frame_stride, start, control_fps, frame_sampling)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"the clip folder '{folder}' does not exist.")
    video_path, mask_path, mask_name = find_clip_parts(folder, control_name)
    if video_path.is_dir():
        files = _image_files(video_path)
        if not files:
            raise InputError(f"the frame folder '{video_path}' holds no images.")
        frames_list = [_open_image(p, "the frame") for p in files]
        if len({f.shape for f in frames_list}) != 1:
            raise InputError(f"the frames in '{video_path}' do not all have the same size.")
        frames, video_fps = np.stack(frames_list), None
    else:
        frames, video_fps = _read_video_file(video_path, "the video")
    source_fps = control_fps or video_fps or FOLDER_FPS
    source = read_masks(mask_path, threshold)
    label = mask_path.name
    what = f"the control '{label}'"
    _check_mask_size(source.masks, *frames.shape[1:3], what, f"the video '{video_path.name}'")
    if not source.masks.any():
        raise InputError(f"{what} is empty: none of its {len(source.masks)} frames has a mask pixel.")
    notes: list[str] = []
    masks = np.repeat(source.masks, len(frames), axis=0) if source.still else source.masks
    frames, masks = _align_lengths(frames, masks, what, video_path.name, notes)
    indices = frame_indices(
        len(frames),
        source_fps,
        num_frames,
        fps,
        frame_stride,
        start,
        f"the video '{video_path.name}'" + (" (cut to its mask's length)" if notes else ""),
        frame_sampling,
    )
    origin = (
        "--control_fps" if control_fps else ("its own rate" if video_fps else "assumed for frame folders")
    )
    timing = describe_timing(source_fps, fps, frame_stride, frame_sampling)
    notes.insert(
        0,
        f"clip '{folder.name}': video and mask_{mask_name}, {len(frames)} frames at {source_fps:g} fps ({origin}) "
        f"-> {num_frames} frames, {timing} (source frames {_describe_indices(indices)})",
    )
    frames_t, masks_t, geometry = joint_transform(
        frames[indices], masks[indices], height, width, crop, with_geometry=True
    )
    control = masks_t.numpy()
    _check_crop(control, label, crop)
    notes.append(_geometry_note(frames.shape[1:3], geometry, height, width, crop, crop_given))
    _note_first_frame([control], [mask_name], notes)
    truth = frames_t.permute(0, 2, 3, 1).numpy()
    return GenerationInputs(
        name=name or folder.name,
        image=truth[0].copy(),
        controls=[control],
        labels=[mask_name],
        truth=truth,
        fps=effective_fps(source_fps, fps, frame_stride, frame_sampling),
        notes=notes,
        source_frames=[int(i) for i in indices],
        timing=timing,
    )


def masks_npz_bytes(masks: np.ndarray, fps: float) -> bytes:
    """``(T, H, W)`` bool masks as a ``.npz`` (``control``, ``fps``), readable by :func:`read_masks`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, control=masks.astype(bool), fps=np.float64(fps))
    return buffer.getvalue()
