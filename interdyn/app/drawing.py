"""What the app draws: the first frame with the driver's mask tinted red, enlarged when small, and the
path clicked on it."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

MASK_RGB = np.array([255, 40, 40], dtype=np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image`` with ``mask`` tinted red."""
    out = image[..., :3].astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * MASK_RGB
    return out.round().astype(np.uint8)


def zoom_of(shape: tuple[int, ...], target: int = 384) -> int:
    """Whole-pixel enlargement that shows a small image at about ``target`` pixels."""
    return max(1, math.floor(target / max(shape[:2])))


def enlarge(image: np.ndarray, zoom: int) -> np.ndarray:
    """``image`` with each pixel repeated ``zoom`` times along both axes."""
    return image.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else image


def path_canvas(image: np.ndarray | None, mask: np.ndarray | None, points: list) -> np.ndarray | None:
    """The first frame (enlarged when small) with the painted mask and the path drawn on it."""
    if image is None:
        return None
    zoom = zoom_of(image.shape)
    shown = overlay(image, mask) if mask is not None else image[..., :3]
    canvas = Image.fromarray(enlarge(shown, zoom))
    draw = ImageDraw.Draw(canvas)
    xy = [((x + 0.5) * zoom, (y + 0.5) * zoom) for x, y in points]
    if len(xy) > 1:
        draw.line(xy, fill=(255, 230, 0), width=max(2, zoom))
    for k, (x, y) in enumerate(xy):
        r = max(3, 2 * zoom)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(0, 200, 255) if k == 0 else (255, 230, 0))
    return np.asarray(canvas)
