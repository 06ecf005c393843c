"""The app's long videos: a drawn path over more frames than the model's window gives one video of that
length, made by generate in overlapping windows (docs/long.md), with the page's continuation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interdyn.app.engine import TINY_RANDOM, Driver, Engine
from interdyn.app.ui import driver_of, editor_value


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)


def square_mask(h: int = 48, w: int = 64) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[20:28, 44:52] = True
    return mask


def test_a_long_path_gives_one_video_of_its_length(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "runs", model=TINY_RANDOM, device="cpu")
    window = engine.clip.num_frames
    frames = window + 6
    driver = Driver.drawn(square_mask(), [(48, 24), (4, 24)], length=frames)
    assert driver.masks.shape[0] == frames
    result = engine.generate(
        picture(), driver, num_samples=1, seed=3, num_inference_steps=1, continuation="chain"
    )
    assert result.videos["driver"].shape[:2] == (1, frames)
    run = engine.out / "run001"
    settings = json.loads((run / "run001_settings.json").read_text())
    assert settings["continuation"] == "chain" and len(settings["windows"]) == 2
    assert json.loads((run / "driver_path.json").read_text())["frames"] == frames
    assert "--num_frames" in (run / "command.txt").read_text()


@pytest.mark.parametrize("length", [None, 14])
def test_the_page_length_of_one_window_keeps_a_plain_run(length) -> None:
    """The page's length slider at the clip's own length is the plain one-window driver (no --num_frames)."""
    editor = editor_value(picture(), square_mask())
    driver = driver_of(editor, None, "path", [[48, 24], [4, 24]], 0, None, length)
    assert driver.masks.shape[0] == 14
