"""Built-in test scenes: first frames of the built-in synthetic world (``data_prep.synthetic``).

Each scene is a first frame rendered by the world's own generator (discs at rest, a hand or a sliding
object entering from a border), the driver's mask in that frame and the path the world's script would move
it along over a 14-frame clip at 7 FPS: a starting point that the user can edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

NUM_SCENES = 6
SCENE_SEED = 2025  # not the dataset's seeds (0 and up): scenes the trained world has not seen verbatim


@dataclass
class Scene:
    """A first frame with its driver's mask and a suggested path (``(x, y)`` points)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    points: list[list[float]]


@cache
def builtin_scenes(count: int = NUM_SCENES, size: tuple[int, int] = (128, 128)) -> tuple[Scene, ...]:
    """``count`` scenes of the built-in world at its default frame size (deterministic)."""
    from data_prep.synthetic import World, make_video

    world = World(height=size[0], width=size[1])
    scenes = []
    for k in range(count):
        rng = np.random.default_rng(SCENE_SEED + k)
        # The dataset's 14 fps: a 14-frame clip at 7 FPS takes every 2nd frame, 0 to 26.
        video = make_video(rng, world, num_frames=27, fps=14.0)
        driver = video["sim"]["driver"]
        points = [[float(v) for v in driver[0]], [float(v) for v in driver[-1]]]
        name = f"scene {k + 1}: {video['path'].kind}"
        scenes.append(Scene(name, video["frames"][0], video["control"][0], points))
    return tuple(scenes)
