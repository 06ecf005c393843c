"""The inputs of ``interdyn generate`` at the model's clip: an image with control sequences, or a clip
folder.

Whatever their size and frame rate, masks are brought to the model's clip as the authors' demo brings
its examples: every n-th frame from the first, with the uniform stride nearest the target rate (every
2nd frame of 12 fps for "7 FPS", :mod:`interdyn.data.sampling`), then resized and cropped with
:func:`interdyn.data.transforms.joint_transform` (centre crop by default, as the demo; the mask-aware
window of training as an option). Every problem is an :class:`~interdyn.errors.InputError` with one
sentence saying what is wrong.

A clip folder holds ``video.*`` (a video file, or a folder ``video/`` of frame images) and one or more
``mask_<name>.*`` (as :mod:`data_prep.folder` expects, e.g. the authors' ``examples/<id>/``); the video's
frames at the same positions are the ground truth. Masks need not have the video's length: a longer mask
is cut at the video's end (both start at frame 0), a shorter driver mask cuts the clip to its length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec
from interdyn.data.sampling import (
    FRAME_SAMPLINGS,
    clip_offsets,
    describe_timing,
    effective_fps,
    valid_starts,
)
from interdyn.data.transforms import CROPS, apply_geometry, joint_transform
from interdyn.errors import InputError
from interdyn.inputs.files import (
    FOLDER_FPS,
    MaskSource,
    check_threshold,
    find_clip_parts,
    read_frames,
    read_image,
    read_masks,
)

# The authors' demo cuts the paper's clips but centres its crop on the image, not on the masks.
DEMO_CLIP = replace(PAPER_CLIP, crop="center")


@dataclass(frozen=True)
class ReadOptions:
    """How the user's files are read, besides the clip they are brought to.

    Args:
        start: first source frame of the clip window.
        control_fps: frame rate of the masks (and of a clip folder's video); ``None``: the file's own,
            else :data:`~interdyn.inputs.files.FOLDER_FPS`.
        threshold: mask threshold (1-255, brightest channel); None: the masks as given, the brightest
            channel scaled to 0..1 without a cut (the authors' demo feeds its mask videos so).
        name: name of the outputs (default: the image's stem or the clip folder's name).
        crop_given: whether the user chose the crop (the notes say when the demo's default was taken).
    """

    start: int = 0
    control_fps: float | None = None
    threshold: int | None = 128
    name: str | None = None
    crop_given: bool = True


DEFAULT_READ = ReadOptions()


@dataclass
class GenerationInputs:
    """Everything the sampler needs, at the model's resolution."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8: the first frame
    controls: list[np.ndarray]  # one (T, H, W) per control: bool, or float32 in 0..1 (masks as given)
    labels: list[str]  # one short name per control sequence
    truth: np.ndarray | None  # (T, H, W, 3) uint8 ground truth (clip folders only)
    fps: float  # playback rate of the clips (the rate actually taken, e.g. 6 for every 2nd frame of 12 fps)
    notes: list[str] = field(default_factory=list)  # how the inputs were resampled and cropped
    source_frames: list[int] = field(default_factory=list)  # the source frames taken (first control / clip)
    timing: str = ""  # e.g. "every 2nd frame of 12 fps = 6 fps (uniform stride nearest 7 FPS)"


# ---------------------------------------------------------------------------- clip frames
def frame_indices(
    num_source: int, source_fps: float, clip: ClipSpec, start: int = 0, what: str = "the control"
) -> np.ndarray:
    """Source frames of ``clip`` from ``start``: ``num_frames`` at ``fps`` (the uniform stride nearest ``fps``,
    or the nearest frame by timestamp with ``frame_sampling="timestamp"``) or every ``frame_stride``-th
    frame. Raises an InputError when the source is too short."""
    offsets = clip_offsets(clip.num_frames, source_fps, clip.fps, clip.frame_stride, clip.frame_sampling)
    if start not in valid_starts(num_source, offsets):
        need = start + int(offsets[-1]) + 1
        rate = f"a stride of {clip.frame_stride}" if clip.frame_stride else f"{clip.fps:g} FPS"
        since = f" from frame {start}" if start else ""
        raise InputError(
            f"{what} has {num_source} frames at {source_fps:g} fps, but {clip.num_frames} frames at {rate}{since} "
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
    label: str, source: MaskSource, clip: ClipSpec, options: ReadOptions, notes: list[str]
) -> tuple[np.ndarray, float, np.ndarray]:
    """A control's masks at the clip's timestamps and the source frame rate used, with a note saying
    which frames were taken."""
    what = f"the control '{label}'"
    if not source.masks.any():
        raise InputError(
            f"{what} is empty: none of its {len(source.masks)} frames has a mask pixel (a driver pixel "
            "is one whose brightest channel reaches --threshold, or is above 0 with --threshold none)."
        )
    num_frames, control_fps = clip.num_frames, options.control_fps
    if source.still:
        notes.append(f"control '{label}': one mask image, repeated over {num_frames} frames")
        return np.repeat(source.masks, num_frames, axis=0), float(control_fps or FOLDER_FPS), np.zeros(0, int)
    source_fps = float(control_fps or source.fps or FOLDER_FPS)
    origin = (
        "--control_fps"
        if control_fps
        else ("its own rate" if source.fps else "assumed for image folders / .npz")
    )
    indices = frame_indices(len(source.masks), source_fps, clip, options.start, what)
    notes.append(
        f"control '{label}': {len(source.masks)} frames at {source_fps:g} fps ({origin}) -> {num_frames} "
        f"frames, {_timing(source_fps, clip)} "
        f"(source frames {_describe_indices(indices)})"
    )
    return source.masks[indices], source_fps, indices


def _timing(source_fps: float, clip: ClipSpec) -> str:
    """:func:`describe_timing` for ``clip``."""
    return describe_timing(source_fps, clip.fps, clip.frame_stride, clip.frame_sampling)


def _clip_fps(source_fps: float, clip: ClipSpec) -> float:
    """The playback rate of ``clip`` cut from ``source_fps`` (:func:`effective_fps`)."""
    return effective_fps(source_fps, clip.fps, clip.frame_stride, clip.frame_sampling)


def _geometry_note(source_hw: tuple[int, int], geometry: tuple, clip: ClipSpec, crop_given: bool) -> str:
    height, width, crop = clip.height, clip.width, clip.crop
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


def fit_masks(masks: np.ndarray, geometry: tuple, height: int, width: int) -> np.ndarray:
    """Masks ``(T, H, W)`` of a source clip (bool, or float values as given) through the resize (NEAREST,
    as the authors') and crop window that :func:`joint_transform` returned as ``geometry``."""
    if masks.dtype == bool:
        return apply_geometry(masks, height, width, geometry).numpy()
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    values = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    h, w = masks.shape[-2:]
    size = [round(h * geometry[0]), round(w * geometry[1])]
    if size != [h, w]:
        values = TF.resize(values, size, interpolation=InterpolationMode.NEAREST, antialias=False)
    top, left = int(geometry[2]), int(geometry[3])
    return values[:, 0, top : top + height, left : left + width].numpy().copy()


def control_tensor(control: np.ndarray) -> torch.Tensor:
    """A control sequence ``(T, H, W)`` -> the ``(1, T, 3, H, W)`` float tensor in ``[-1, 1]`` the pipeline
    takes: binary masks as -1 / +1, masks as given as ``2 v - 1`` (the authors' demo: values in 0..1 on
    three equal channels, normalised as diffusers normalises images)."""
    from interdyn.contract import masks_to_control

    values = torch.from_numpy(np.ascontiguousarray(control))
    if values.dtype == torch.bool:
        return masks_to_control(values)
    values = 2.0 * values.float() - 1.0
    return values[None, :, None].expand(-1, -1, 3, -1, -1).contiguous()


def _check_crop(control: np.ndarray, label: str, crop: str) -> None:
    if not control.any():
        hint = " (try --crop mask_aware)" if crop != "mask_aware" else ""
        raise InputError(
            f"the control '{label}' has no mask pixel left in the selected frames after the {crop} crop{hint}."
        )


def _check_options(clip: ClipSpec, options: ReadOptions) -> None:
    """One InputError sentence for the first setting that cannot cut a clip."""
    check_threshold(options.threshold)
    if clip.crop not in ("center", "mask_aware"):
        raise InputError(
            f"--crop must be 'center' or 'mask_aware', got '{clip.crop}' (known crops: {CROPS})."
        )
    if clip.height <= 0 or clip.width <= 0 or clip.height % 8 or clip.width % 8:
        raise InputError(
            f"--height and --width must be positive multiples of 8, got {clip.height}x{clip.width}."
        )
    fps = clip.fps
    if clip.num_frames < 1 or fps is None or not (math.isfinite(fps) and fps > 0):
        shown = "none" if fps is None else f"{fps:g}"
        raise InputError(f"--num_frames and --fps must be positive, got {clip.num_frames} and {shown}.")
    control_fps = options.control_fps
    if control_fps is not None and not (math.isfinite(control_fps) and control_fps > 0):
        raise InputError(
            f"--control_fps must be a positive number of frames per second, got {control_fps:g}."
        )
    if clip.frame_sampling not in FRAME_SAMPLINGS:
        raise InputError(
            f"--frame_sampling must be one of {', '.join(FRAME_SAMPLINGS)}, got '{clip.frame_sampling}'."
        )
    if (clip.frame_stride is not None and clip.frame_stride < 1) or options.start < 0:
        raise InputError(
            f"--frame_stride must be at least 1 and --start at least 0, got {clip.frame_stride} and "
            f"{options.start}."
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
    clip: ClipSpec = DEMO_CLIP,
    options: ReadOptions = DEFAULT_READ,
) -> GenerationInputs:
    """An image and one or more control sequences (several: counterfactuals of the same image), brought
    to ``clip``.

    With several controls the mask-aware crop is centred on the union of all of them, so that every
    sequence sees the same crop of the image.
    """
    _check_options(clip, options)
    if not controls:
        raise InputError(
            "--image needs at least one --control (a mask video, a folder of mask images or a .npz)."
        )
    image_path = Path(image).expanduser()
    picture = read_image(image_path)
    paths = [Path(c).expanduser() for c in controls]
    labels = _unique_labels(paths)
    notes: list[str] = []
    sequences, rates, taken = [], [], []
    for label, path in zip(labels, paths, strict=True):
        source = read_masks(path, options.threshold)
        _check_mask_size(
            source.masks, *picture.shape[:2], f"the control '{label}'", f"the image '{image_path.name}'"
        )
        sequence, rate, indices = _resample_control(label, source, clip, options, notes)
        sequences.append(sequence)
        rates.append(rate)
        taken.append(indices)

    # One crop window for the image and every control: joint_transform on the image with the union of
    # all masks (what mask_aware centres on), then the same resize and window for each sequence.
    height, width = clip.height, clip.width
    union = np.logical_or.reduce([c.any(axis=0) for c in sequences])
    frame_t, _, geometry = joint_transform(
        picture[None], union[None], height, width, clip.crop, with_geometry=True
    )
    fitted = []
    for label, sequence in zip(labels, sequences, strict=True):
        window = fit_masks(sequence, geometry, height, width)
        _check_crop(window, label, clip.crop)
        fitted.append(window)
    notes.append(_geometry_note(picture.shape[:2], geometry, clip, options.crop_given))
    _note_first_frame(fitted, labels, notes)
    return GenerationInputs(
        name=options.name or image_path.stem,
        image=frame_t[0].permute(1, 2, 0).numpy(),
        controls=fitted,
        labels=labels,
        truth=None,
        fps=_clip_fps(rates[0], clip),
        notes=notes,
        source_frames=[int(i) for i in taken[0]],
        timing=_timing(rates[0], clip),
    )


def _note_first_frame(controls: list[np.ndarray], labels: list[str], notes: list[str]) -> None:
    for control, label in zip(controls, labels, strict=True):
        if not control[0].any():
            notes.append(
                f"note: the driver of '{label}' is not visible in the first frame (fine for objects that enter "
                "the scene; hand models expect the hand in frame 0)"
            )


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
    clip: ClipSpec = DEMO_CLIP,
    options: ReadOptions = DEFAULT_READ,
) -> GenerationInputs:
    """A clip folder: its first selected frame is the image, its mask the control, its frames the
    ground truth (the same frames, resized and cropped together with the masks).

    The defaults are the authors' demo preprocessing of their ``examples/<id>/`` folders: every 2nd frame
    of 12 fps from frame 0, resize (short side) then torchvision's centre crop to 256x384, masks resized
    with torchvision's NEAREST."""
    _check_options(clip, options)
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise InputError(
            f"--clip takes a folder (video.* and mask_<name>.*), but '{folder}' is a file; give an image "
            "with --image and its masks with --control."
        )
    if not folder.is_dir():
        raise InputError(f"the clip folder '{folder}' does not exist.")
    video_path, mask_path, mask_name = find_clip_parts(folder, control_name)
    frames, video_fps = read_frames(video_path)
    control_fps = options.control_fps
    source_fps = control_fps or video_fps or FOLDER_FPS
    source = read_masks(mask_path, options.threshold)
    label = mask_path.name
    what = f"the control '{label}'"
    _check_mask_size(source.masks, *frames.shape[1:3], what, f"the video '{video_path.name}'")
    if not source.masks.any():
        raise InputError(f"{what} is empty: none of its {len(source.masks)} frames has a mask pixel.")
    notes: list[str] = []
    masks = np.repeat(source.masks, len(frames), axis=0) if source.still else source.masks
    frames, masks = _align_lengths(frames, masks, what, video_path.name, notes)
    cut = " (cut to its mask's length)" if notes else ""
    indices = frame_indices(
        len(frames), source_fps, clip, options.start, f"the video '{video_path.name}'{cut}"
    )
    origin = (
        "--control_fps" if control_fps else ("its own rate" if video_fps else "assumed for frame folders")
    )
    timing = _timing(source_fps, clip)
    notes.insert(
        0,
        f"clip '{folder.name}': video and mask_{mask_name}, {len(frames)} frames at {source_fps:g} fps ({origin}) "
        f"-> {clip.num_frames} frames, {timing} (source frames {_describe_indices(indices)})",
    )
    frames_t, masks_t, geometry = joint_transform(
        frames[indices], masks[indices] > 0, clip.height, clip.width, clip.crop, with_geometry=True
    )
    control = masks_t.numpy()
    if masks.dtype != bool:  # masks as given: their values through the same resize and crop
        control = fit_masks(masks[indices], geometry, clip.height, clip.width)
    _check_crop(control, label, clip.crop)
    notes.append(_geometry_note(frames.shape[1:3], geometry, clip, options.crop_given))
    _note_first_frame([control], [mask_name], notes)
    truth = frames_t.permute(0, 2, 3, 1).numpy()
    return GenerationInputs(
        name=options.name or folder.name,
        image=truth[0].copy(),
        controls=[control],
        labels=[mask_name],
        truth=truth,
        fps=_clip_fps(source_fps, clip),
        notes=notes,
        source_frames=[int(i) for i in indices],
        timing=timing,
    )
