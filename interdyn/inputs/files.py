"""Reading the user's files for ``interdyn generate``: the image, driver masks, clip folders.

Control masks come from a mask video, a folder of mask images, a single mask image (the same mask on
every frame) or a ``.npz`` array. Every problem with a user's file is an
:class:`~interdyn.errors.InputError` with one sentence saying what is wrong.

:func:`read_image_folder` and :func:`iter_media_frames` read frame folders and mask files for the folder
preparer (:mod:`data_prep.folder`) too; they raise :class:`~interdyn.data.media.MediaError` for each caller to word.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interdyn.data.media import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    MediaError,
    binarize,
    image_files,
    iter_video_frames,
    mask_values,
    open_image,
    read_video_file,
    short_reason,
)
from interdyn.data.video import VideoDecodeError, decode_frames
from interdyn.errors import InputError

FOLDER_FPS = 7.0  # frame rate assumed for image folders and .npz files without an ``fps`` entry
NPZ_KEYS = ("control", "masks", "mask")


@dataclass
class MaskSource:
    """Driver masks as read from a file, at the file's own frame rate: binary, or as given (values)."""

    masks: np.ndarray  # (T, H, W) bool, or float32 in 0..1 as given (threshold None)
    fps: float | None  # None: the file carries no frame rate
    still: bool = False  # a single mask image, to be repeated over the clip


def check_threshold(threshold: int | None) -> None:
    """A mask threshold is None (masks as given) or a whole number from 1 to 255 (0 or less would make
    every pixel a driver)."""
    if threshold is None:
        return
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | np.integer)
        or not 1 <= threshold <= 255
    ):
        raise InputError(
            f"--threshold must be none (masks as given) or a whole number from 1 to 255, got {threshold!r}."
        )


def to_masks(frames: np.ndarray, threshold: int | None, zero_one: bool = True) -> np.ndarray:
    """Mask frames -> bool masks cut at ``threshold`` (:func:`~interdyn.data.media.binarize`), or float32
    values in 0..1 as given when ``threshold`` is None (:func:`~interdyn.data.media.mask_values`)."""
    if threshold is None:
        return mask_values(frames, zero_one=zero_one)
    return binarize(frames, threshold, zero_one=zero_one)


class FolderError(MediaError):
    """A folder of images that gives no stack of frames: ``kind`` is ``empty`` (no images), ``unreadable``
    (``path`` names the image) or ``sizes`` (images of different sizes)."""

    def __init__(self, kind: str, path: Path, reason: str = "") -> None:
        super().__init__(reason or kind)
        self.kind, self.path = kind, path


def _open_images(files: list[Path]) -> Iterator[np.ndarray]:
    for path in files:
        try:
            yield open_image(path)
        except MediaError as err:
            raise FolderError("unreadable", path, str(err)) from None


def iter_media_frames(path: Path) -> Iterator[np.ndarray]:
    """The ``(H, W, 3)`` uint8 RGB frames of a folder of images, an image or a video file, one at a time
    (a long mask video never sits in memory whole); :class:`MediaError` (:class:`FolderError` for an
    image of a folder) when one cannot be read."""
    if path.is_dir():
        return _open_images(image_files(path))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([open_image(path)])
    return iter_video_frames(path)


def read_image_folder(folder: Path) -> np.ndarray:
    """The images of a folder in natural order -> ``(T, H, W, 3)`` uint8 RGB; :class:`FolderError` when
    it gives no stack (``interdyn generate`` and the folder preparer word it each their own way)."""
    files = image_files(folder)
    if not files:
        raise FolderError("empty", folder)
    frames = list(_open_images(files))
    if len({f.shape for f in frames}) != 1:
        raise FolderError("sizes", folder)
    return np.stack(frames)


def _read_folder(folder: Path, messages: dict[str, str]) -> np.ndarray:
    """:func:`read_image_folder`, its problems as InputErrors worded by ``messages[kind]`` (a format string
    of ``folder``, ``path`` and ``reason``)."""
    try:
        return read_image_folder(folder)
    except FolderError as err:
        raise InputError(messages[err.kind].format(folder=folder, path=err.path, reason=err)) from None


def _open_image(path: Path, what: str) -> np.ndarray:
    try:
        return open_image(path)
    except MediaError as err:
        raise InputError(f"cannot read {what} '{path}' ({err}).") from None


def read_image(path: str | Path) -> np.ndarray:
    """An image file (or the first frame of a video file) -> ``(H, W, 3)`` uint8 RGB."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(
            f"the image '{path}' is a folder; give an image file (a clip folder goes to --clip)."
        )
    if not path.is_file():
        raise InputError(f"the image '{path}' does not exist.")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            return decode_frames(path.read_bytes(), [0])[0]
        except VideoDecodeError as err:
            raise InputError(f"cannot read the image '{path}' ({short_reason(err)}).") from None
    return _open_image(path, "the image")


def read_frames(path: Path) -> tuple[np.ndarray, float | None]:
    """A clip folder's video: a video file or a folder of frame images -> every frame ``(T, H, W, 3)``
    uint8 and its frame rate (None for a frame folder or a container without one)."""
    if not path.is_dir():
        try:
            _, frames, fps = read_video_file(path)
        except MediaError as err:
            raise InputError(f"cannot read the video '{path}' ({err}).") from None
        return frames, fps
    messages = {
        "empty": "the frame folder '{folder}' holds no images.",
        "unreadable": "cannot read the frame '{path}' ({reason}).",
        "sizes": "the frames in '{folder}' do not all have the same size.",
    }
    return _read_folder(path, messages), None


def _read_mask_video(path: Path, threshold: int | None) -> MaskSource:
    """A mask video, binarised (or brought to 0..1) frame by frame (it never sits in memory as RGB), at its
    own rate."""
    import av

    if not path.stat().st_size:
        raise InputError(f"cannot read the control '{path}' (the file is empty).")
    try:
        masks = [to_masks(frame[None], threshold, zero_one=False)[0] for frame in iter_video_frames(path)]
    except MediaError as err:
        raise InputError(f"cannot read the control '{path}' ({err}).") from None
    if not masks:
        raise InputError(f"cannot read the control '{path}' (it has no frames).")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    return MaskSource(np.stack(masks), fps if math.isfinite(fps) and fps > 0 else None)


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


def _npz_masks(path: Path, masks: np.ndarray) -> np.ndarray:
    """The mask array of a ``.npz`` as ``(T, H, W)`` or ``(T, H, W, C)``: a single mask ``(H, W)``, masks
    with a channel axis ``(T, 1, H, W)`` / ``(T, H, W, 1|3|4)`` or a batch of one ``(1, T, H, W)``."""
    if masks.ndim == 2:
        return masks[None]
    if masks.ndim == 4 and masks.shape[1] == 1:
        return masks[:, 0]
    if masks.ndim == 4 and masks.shape[-1] in (1, 3, 4):
        return masks[..., 0] if masks.shape[-1] == 1 else masks
    if masks.ndim == 4 and masks.shape[0] == 1:
        return masks[0]
    if masks.ndim != 3:
        raise InputError(
            f"the control '{path}' has masks of shape {masks.shape}; expected (frames, height, width)."
        )
    return masks


def _read_npz(path: Path, threshold: int | None) -> MaskSource:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read the control '{path}' ({short_reason(err)}).") from None
    fps = _npz_fps(path, arrays.pop("fps")) if "fps" in arrays else None
    key = next((k for k in NPZ_KEYS if k in arrays), None)
    if key is None and len(arrays) == 1:
        key = next(iter(arrays))
    if key is None:
        raise InputError(
            f"the control '{path}' holds arrays {sorted(arrays)}; name the masks 'control' (shape T x H x W)."
        )
    return MaskSource(to_masks(_npz_masks(path, arrays[key]), threshold), fps)


def read_masks(path: str | Path, threshold: int | None = 128) -> MaskSource:
    """Driver masks from a mask video, a folder of mask images, a single mask image or a ``.npz``
    (array ``control``, ``masks`` or the only one; optional scalar ``fps``): bool, cut at ``threshold``
    (brightest channel, 0-255), or float32 values in 0..1 as given when ``threshold`` is None."""
    check_threshold(threshold)
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"the control '{path}' does not exist.")
    if path.is_dir():
        messages = {
            "empty": f"the control folder '{{folder}}' holds no mask images ({', '.join(sorted(IMAGE_SUFFIXES))}).",
            "unreadable": "cannot read the mask image '{path}' ({reason}).",
            "sizes": "the mask images in '{folder}' do not all have the same size.",
        }
        return MaskSource(to_masks(_read_folder(path, messages), threshold), None)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, threshold)
    if suffix in IMAGE_SUFFIXES:
        image = _open_image(path, "the control")
        return MaskSource(to_masks(image[None], threshold), None, still=True)
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(
            f"the control '{path}' is neither a mask video, a folder of mask images, a mask image nor a .npz."
        )
    return _read_mask_video(path, threshold)


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


def masks_npz_bytes(masks: np.ndarray, fps: float) -> bytes:
    """``(T, H, W)`` bool masks as a ``.npz`` (``control``, ``fps``), readable by :func:`read_masks`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, control=masks.astype(bool), fps=np.float64(fps))
    return buffer.getvalue()
