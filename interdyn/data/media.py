"""Reading a user's media files: what ``interdyn generate`` and the folder preparer (``data_prep.folder``)
both read.

File suffixes, frame folders in natural order (``2.png`` before ``10.png``), images, video files and
mask binarisation. Problems are raised as :class:`MediaError` with a short reason; each caller turns it
into its own error (a one-sentence ``InputError`` for ``generate``, a skipped sample for a preparer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from interdyn.data.video import VideoDecodeError, decode_frames, probe_video

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif"}


class MediaError(Exception):
    """A media file that cannot be read; the message is a short reason (one line)."""


def short_reason(err: Exception) -> str:
    """The first line of a library's error message, at most 200 characters, without a final period."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200].rstrip(".")


def natural_key(path: Path) -> list:
    """Sort key of a file name with its digit runs compared as numbers (``frame2`` before ``frame10``)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder in natural order."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


def open_image(path: Path) -> np.ndarray:
    """An image file -> ``(H, W, 3)`` uint8 RGB (a writable copy); :class:`MediaError` when unreadable.

    Images of more than 8 bits per channel are brought to 8 bits by their range (a 16-bit grey PNG is
    divided by 257, a float image of values up to 1 multiplied by 255) rather than cut at 255, which would
    turn every pixel above 255 white."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode.startswith(("I", "F")):
                return _grey_to_rgb8(np.array(image), image.mode)
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise MediaError(short_reason(err)) from None


def _grey_to_rgb8(values: np.ndarray, mode: str) -> np.ndarray:
    """A grey image of Pillow's wide modes (``I;16*``: 16 bits, ``I``: 32-bit integers, ``F``: floats)
    -> ``(H, W, 3)`` uint8 by its range: 16 bits / 257; ``I`` as 16 bits when it holds values above 255;
    ``F`` x 255 when its values lie within 0..1."""
    values = values.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0
    elif mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def read_video_file(path: Path) -> tuple[bytes, np.ndarray, float | None]:
    """The bytes, every frame ``(T, H, W, 3)`` uint8 and the frame rate (None when the container has no
    usable one) of a video file; :class:`MediaError` when it is empty or cannot be decoded."""
    data = Path(path).read_bytes()
    if not data:
        raise MediaError("the file is empty")
    try:
        _, fps, _, _ = probe_video(data)
        frames = decode_frames(data)
    except VideoDecodeError as err:
        raise MediaError(short_reason(err)) from None
    return data, frames, (float(fps) if fps and math.isfinite(fps) and fps > 0 else None)


def iter_video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video file one at a time, ``(H, W, 3)`` uint8 RGB (a long mask video never sits
    in memory whole); :class:`MediaError` when it cannot be decoded."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise MediaError(short_reason(err)) from None


def binarize(
    masks: np.ndarray, threshold: int = 128, min_blob: int = 0, zero_one: bool = False
) -> np.ndarray:
    """Mask frames ``(T, H, W)`` or ``(T, H, W, C)`` (grey / RGB / RGBA, any integer or float) -> bool
    ``(T, H, W)``.

    The brightest colour channel counts (alpha is ignored). Booleans are kept; other values are compared
    with ``threshold`` on a 0-255 scale (floats up to 1 are scaled by 255), which also removes the grey
    halos of lossy mask videos. Connected blobs smaller than ``min_blob`` pixels are dropped (specks).

    With ``zero_one``, an integer array whose values are all 0 or 1 is taken as it is (a 0/1 mask file).
    Use it only on a whole sequence, not frame by frame: a dark frame of a 0-255 video would pass for a
    0/1 mask.
    """
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[..., :3].max(axis=-1)
    if masks.dtype == bool:
        out = masks.copy()
    elif (
        zero_one
        and np.issubdtype(masks.dtype, np.integer)
        and masks.size
        and 0 <= masks.min() <= masks.max() <= 1
    ):
        out = masks > 0
    else:
        scale = 255.0 if np.issubdtype(masks.dtype, np.floating) and masks.max(initial=0) <= 1.0 else 1.0
        out = masks.astype(np.float32) * scale >= threshold
    if min_blob > 1:
        _drop_specks(out, min_blob)
    return out


def mask_values(masks: np.ndarray, zero_one: bool = False) -> np.ndarray:
    """Mask frames ``(T, H, W)`` or ``(T, H, W, C)`` -> float32 ``(T, H, W)`` in 0..1, as given: the
    brightest colour channel (alpha ignored), scaled by the range of its type and not cut (booleans are
    0 or 1, integers / 255, floats above 1 / 255). A lossy mask video keeps its grey levels and codec
    noise, as the authors' demo feeds it. ``zero_one`` as for :func:`binarize` (a whole sequence only)."""
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[..., :3].max(axis=-1)
    if masks.dtype == bool:
        return masks.astype(np.float32)
    integer = np.issubdtype(masks.dtype, np.integer)
    if zero_one and integer and masks.size and 0 <= masks.min() <= masks.max() <= 1:
        return masks.astype(np.float32)
    values = masks.astype(np.float32)
    if integer or values.max(initial=0) > 1.0:
        values = values / np.float32(255)
    return np.clip(values, 0.0, 1.0)


def _drop_specks(masks: np.ndarray, min_blob: int) -> None:
    """Clear, in place, the 8-connected blobs of fewer than ``min_blob`` pixels in each frame."""
    import cv2

    for t in range(masks.shape[0]):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(masks[t].astype(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_blob)
        small = small[small != 0]  # label 0 is the background
        if small.size:
            masks[t] &= ~np.isin(labels, small)
