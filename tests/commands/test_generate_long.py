"""`interdyn generate` with a driver longer than the model's window (tiny SVD: 14 frames): one video of the
driver's length, the continuation and the windows recorded, and one sentence for long options that cannot
apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interdyn.commands.generate import generate
from interdyn.errors import InputError
from tests.helpers import decoded, scene_frames, square_masks, write_mask_folder

SIZE, LONG = 32, 30


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scene and a 30-frame driver as a folder of mask images (read at 7 fps: every frame is taken)."""
    root = tmp_path_factory.mktemp("long_inputs")
    masks = square_masks(LONG, dx=3)
    Image.fromarray(scene_frames(masks)[0]).save(root / "scene.png")
    return {"image": root / "scene.png", "driver": write_mask_folder(root / "driver", masks)}


def _argv(inputs: dict[str, Path], svd: Path, branch: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--image", str(inputs["image"]), "--control", str(inputs["driver"])),
        *("--svd", str(svd), "--controlnet", str(branch), "--out", str(out)),
        *("--height", str(SIZE), "--width", str(SIZE), "--num_samples", "1", "--steps", "2", "--no_progress"),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, continuation, windows",
    [
        ((), "hold", [[0, 14], [10, 24], [16, 30]]),  # hold is the default for a long driver
        (("--continuation", "chain", "--window_overlap", "6"), "chain", [[0, 14], [8, 22], [16, 30]]),
        (("--continuation", "single"), "single", [[0, 30]]),  # the baseline: one pass over all frames
    ],
)
def test_a_long_driver_gives_one_video_of_its_length(
    inputs: dict[str, Path],
    tiny_svd_folder: Path,
    tiny_branch_folder: Path,
    tmp_path: Path,
    extra: tuple[str, ...],
    continuation: str,
    windows: list[list[int]],
) -> None:
    argv = _argv(inputs, tiny_svd_folder, tiny_branch_folder, tmp_path, "--num_frames", str(LONG), *extra)
    result = generate(argv)
    assert result.videos["driver"].shape == (1, LONG, SIZE, SIZE, 3)
    assert decoded(tmp_path / "scene_s0.mp4").shape == (LONG, SIZE, SIZE, 3)
    record = json.loads((tmp_path / "scene_settings.json").read_text())
    assert record["num_frames"] == LONG and record["model_window"] == 14
    assert record["continuation"] == continuation and record["windows"] == windows
    assert record["sampling"]["continuation"] == continuation
    overlap = 6 if "6" in extra else 4
    assert record["sampling"]["window_overlap"] == overlap
    assert np.isfinite(result.videos["driver"]).all()


def test_a_short_driver_records_one_pass(
    inputs: dict[str, Path], tiny_svd_folder: Path, tiny_branch_folder: Path, tmp_path: Path
) -> None:
    generate(_argv(inputs, tiny_svd_folder, tiny_branch_folder, tmp_path))  # the demo clip: 14 frames
    record = json.loads((tmp_path / "scene_settings.json").read_text())
    assert record["continuation"] == "single" and record["windows"] == [[0, 14]]


@pytest.mark.parametrize(
    "extra, sentence",
    [
        (
            ("--continuation", "hold"),
            r"^--continuation hold continues windows of the model's 14 frames and needs a driver longer than "
            r"one window, but this one has 14 frames \(.*\)\.$",
        ),
        (
            ("--num_frames", "30", "--window_overlap", "14"),
            r"^--window_overlap must be at least 1 and smaller than the model's window of 14 frames, got 14\.$",
        ),
        (
            ("--window_overlap", "0"),
            r"^window_overlap must be a whole number of frames, at least 1, got 0\.$",
        ),
        (("--continuation", "loop"), r"^continuation must be one of .*, got 'loop'\.$"),
    ],
)
def test_long_options_that_cannot_apply_are_one_sentence(
    inputs: dict[str, Path],
    tiny_svd_folder: Path,
    tiny_branch_folder: Path,
    tmp_path: Path,
    extra: tuple[str, ...],
    sentence: str,
) -> None:
    with pytest.raises(InputError, match=sentence):
        generate(_argv(inputs, tiny_svd_folder, tiny_branch_folder, tmp_path, *extra))
    assert not (tmp_path / "scene_s0.mp4").exists()
