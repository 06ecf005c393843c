"""Pictures of generated videos: labelled side-by-side panels and frame contact sheets.

Arrays are uint8 RGB: videos ``(T, H, W, 3)``, images ``(H, W, 3)``. Labels are drawn with PIL's
default font; strip heights are even so that the results stay encodable with libx264.
"""

from __future__ import annotations

import io
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
FramesT = TypeVar("FramesT", torch.Tensor, np.ndarray)


def to_uint8(frames: FramesT) -> FramesT:
    """Frames with values in ``[0, 1]`` (any layout; a tensor or an array) -> uint8 levels ``0..255``:
    clamped to ``[0, 1]``, then rounded to the nearest level. A tensor stays a tensor on its device."""
    if isinstance(frames, np.ndarray):
        return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


def _font(panel_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, panel_height // 18)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, shortened with '..' until it fits ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "..", font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def _strip_height(font: ImageFont.ImageFont) -> int:
    _, top, _, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=font)
    height = bottom - top + 6
    return height + height % 2


def masks_to_rgb(masks: np.ndarray) -> np.ndarray:
    """``(T, H, W)`` bool masks -> ``(T, H, W, 3)`` uint8: driver white on black."""
    return np.repeat((np.asarray(masks, dtype=bool) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def label_strip(labels: list[str], panel_width: int, panel_height: int) -> np.ndarray:
    """``(h, len(labels) * panel_width, 3)`` uint8: each label centred above its panel."""
    font = _font(panel_height)
    height = _strip_height(font)
    strip = Image.new("RGB", (panel_width * len(labels), height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for i, label in enumerate(labels):
        text = _fit_text(draw, label, font, panel_width - 4)
        x = i * panel_width + (panel_width - _text_width(draw, text, font)) // 2
        draw.text((x, 3), text, fill=TEXT, font=font)
    return np.asarray(strip)


def labelled_row(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Videos ``(T, H, W, 3)`` of equal size side by side under their labels -> ``(T, h + H, n * W, 3)``."""
    if len(panels) != len(labels):
        raise ValueError("one label per panel")
    t, h, w, _ = panels[0].shape
    row = np.concatenate(panels, axis=2)
    strip = label_strip(labels, w, h)
    return np.concatenate([np.broadcast_to(strip, (t, *strip.shape)), row], axis=1)


def contact_sheet(
    rows: list[np.ndarray], labels: list[str], frame_numbers: bool = True, gap: int = 2
) -> np.ndarray:
    """One row per video ``(T, H, W, 3)``, one column per frame (``gap`` pixels apart), the row labels on
    the left and the frame numbers on top -> ``(H', W', 3)`` uint8."""
    t, h, w, _ = rows[0].shape
    font = _font(h)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = max(_text_width(probe, label, font) for label in labels) + 12
    header = _strip_height(font) if frame_numbers else 0
    sheet = Image.new("RGB", (margin + t * (w + gap), header + len(rows) * (h + gap)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k in range(t if frame_numbers else 0):
        text = _fit_text(draw, str(k), font, w - 2)
        x = margin + k * (w + gap) + (w - _text_width(draw, text, font)) // 2
        draw.text((x, 3), text, fill=TEXT, font=font)
    for r, (video, label) in enumerate(zip(rows, labels, strict=True)):
        y = header + r * (h + gap)
        draw.text((6, y + h // 2 - _strip_height(font) // 2 + 3), label, fill=TEXT, font=font)
        for k, frame in enumerate(video):
            sheet.paste(Image.fromarray(np.ascontiguousarray(frame)), (margin + k * (w + gap), y))
    return np.asarray(sheet)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file contents of an ``(H, W, 3)`` uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def chart_canvas(
    size: tuple[int, int], title: str, background: tuple[int, int, int], ink: tuple[int, int, int]
) -> tuple[Image.Image, ImageDraw.ImageDraw, ImageFont.ImageFont]:
    """A blank chart panel of ``size`` (width, height) with ``title`` at its top left: the image, a drawer
    on it and the font to label it with."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((44, 4), title, fill=ink, font=font)
    return image, draw, font
