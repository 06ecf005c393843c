"""Helpers that build tiny datasets in the real layouts (drawn moving shapes, real encoded videos)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from interdyn.data.video import encode_video

H, W = 64, 96
SIZE = 16  # the moving square's side


def square_box(t: int, x0: int = 4, y0: int = 20, speed: int = 2) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the square at frame t (moves right)."""
    x = x0 + speed * t
    return x, y0, x + SIZE, y0 + SIZE


def moving_square_video(
    num_frames: int, height: int = H, width: int = W, **box_kw
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 with a bright square moving right over grey, and its exact masks."""
    frames = np.full((num_frames, height, width, 3), 60, dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        x1, y1, x2, y2 = square_box(t, **box_kw)
        frames[t, y1:y2, x1:x2] = (230, 180, 140)
        masks[t, y1:y2, x1:x2] = True
    return frames, masks


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str = "libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, codec=codec))
    return path


def read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard in a split folder: key -> {extension: bytes}."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def load_masks(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
