"""`interdyn generate --continuation context` (its flag comes from the sampling settings) with a tiny context
branch: one video of the driver's length in three windows, the continuation recorded; one sentence with a
plain branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from interdyn.commands.generate import generate
from interdyn.errors import InterDynError
from interdyn.models import ControlNetSDVModel
from tests.helpers import decoded, scene_frames, square_masks, write_mask_folder

SIZE, LONG = 32, 30


@pytest.fixture(scope="module")
def context_folder(tmp_path_factory: pytest.TempPathFactory, tiny_branch_folder: Path) -> Path:
    branch = ControlNetSDVModel.from_branch(ControlNetSDVModel.from_pretrained(tiny_branch_folder), 4, 14)
    with torch.no_grad():  # as if trained
        branch.controlnet_context_embedding.weight.normal_(
            0, 0.05, generator=torch.Generator().manual_seed(2)
        )
    folder = tmp_path_factory.mktemp("context_branch")
    branch.save_pretrained(folder)
    return folder


def _argv(root: Path, svd: Path, branch: Path, out: Path) -> list[str]:
    masks = square_masks(LONG, dx=3)
    Image.fromarray(scene_frames(masks)[0]).save(root / "scene.png")
    driver = write_mask_folder(root / "driver", masks)
    return [
        *("--image", str(root / "scene.png"), "--control", str(driver), "--num_frames", str(LONG)),
        *("--svd", str(svd), "--controlnet", str(branch), "--out", str(out), "--continuation", "context"),
        *("--height", str(SIZE), "--width", str(SIZE), "--num_samples", "1", "--steps", "1", "--no_progress"),
    ]


def test_generate_continues_with_the_context_branch(
    tmp_path: Path, tiny_svd_folder: Path, context_folder: Path
) -> None:
    result = generate(_argv(tmp_path, tiny_svd_folder, context_folder, tmp_path / "out"))
    assert result.videos["driver"].shape == (1, LONG, SIZE, SIZE, 3)
    assert decoded(tmp_path / "out" / "scene_s0.mp4").shape == (LONG, SIZE, SIZE, 3)
    record = json.loads((tmp_path / "out" / "scene_settings.json").read_text())
    assert record["continuation"] == record["sampling"]["continuation"] == "context"
    assert record["windows"] == [[0, 14], [10, 24], [16, 30]]


def test_context_with_a_plain_branch_is_one_sentence(
    tmp_path: Path, tiny_svd_folder: Path, tiny_branch_folder: Path
) -> None:
    with pytest.raises(
        InterDynError, match=r"^continuation 'context' needs a context branch .*'hold' with it$"
    ):
        generate(_argv(tmp_path, tiny_svd_folder, tiny_branch_folder, tmp_path / "out"))
