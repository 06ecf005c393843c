"""The shipped world weights (weights/world): the SVD loads as SVD img2vid, and the shipped branch makes
videos that follow their control better than the same SVD without control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "weights" / "world"


def _clips(count: int, seed: int = 777) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Held-out world clips (a seed the dataset's splits do not use): frames ``(B, T, 3, 64, 64)`` in
    [-1, 1], control ``(B, T, 3, 64, 64)`` and driver masks ``(B, T, 64, 64)``."""
    from data_prep.synthetic_world import builtin_world, make_video
    from interdyn.contract import masks_to_control

    rng = np.random.default_rng(seed)
    videos = [make_video(rng, builtin_world(64), 14, 7.0) for _ in range(count)]
    frames = (
        torch.from_numpy(np.stack([v["frames"] for v in videos])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    )
    masks = np.stack([v["control"] for v in videos])
    return frames, masks_to_control(torch.from_numpy(masks)), masks


def test_shipped_svd_is_an_svd_img2vid_folder() -> None:
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    pipe = StableVideoDiffusionPipeline.from_pretrained(WORLD / "svd", torch_dtype=torch.float32)
    frames, _, _ = _clips(1)
    image = Image.fromarray(((frames[0, 0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    size = {"height": 64, "width": 64, "num_frames": 14}
    generator = torch.Generator().manual_seed(0)
    out = pipe(image, **size, num_inference_steps=3, output_type="pt", generator=generator).frames
    assert out.shape == (1, 14, 3, 64, 64)
    # the first frame is the conditioning image: a trained image-to-video model keeps it
    first = (out[0, 0] * 2 - 1).clamp(-1, 1)
    assert torch.mean((first - frames[0, 0]) ** 2) < 0.05


@pytest.mark.parametrize("steps", [6])
def test_shipped_branch_draws_the_driver_where_its_control_says(steps: int) -> None:
    """Inside the driver's masks (frames 1..13) the branch's samples are closer to the truth than the same
    SVD's without control (conditioning_scale 0), same clips, same seeds."""
    from interdyn.training.module import InterDynModule

    frames, control, masks = _clips(3)
    module = InterDynModule(
        svd=str(WORLD / "svd"),
        controlnet=str(WORLD / "branch"),
        conditioning_embedding_out_channels=(16, 32, 64),
    ).eval()
    with_control = module.sample(frames, control, seed=0, num_inference_steps=steps)[:, 0]
    without = module.sample(frames, control, seed=0, num_inference_steps=steps, conditioning_scale=0.0)[:, 0]
    truth = (frames + 1) / 2
    region = torch.from_numpy(masks[:, 1:]).unsqueeze(2).float()

    def error(video: torch.Tensor) -> float:
        return float((((video[:, 1:] - truth[:, 1:]) ** 2) * region).sum() / (3 * region.sum()))

    assert error(with_control) < 0.8 * error(without)


def test_the_vae_keeps_what_tells_counterfactual_outcomes_apart(world_test_shards: str) -> None:
    """The shipped VAE's reconstructions of the truths score (nearly) perfectly on the counterfactual test
    (so the VAE is not what holds the models below 0.8), while one video for the whole group, the shared
    first frame held still, is exactly at chance: the test separates outcomes only by what differs."""
    from interdyn.metrics.counterfactual import counterfactual_report, group_members
    from interdyn.world.ceiling import grouped_clips, vae_ceiling

    report = vae_ceiling(str(WORLD / "svd"), world_test_shards, size=64)
    assert report["overall"]["groups"] == 3 and report["overall"]["members"] == 9
    assert report["overall"]["accuracy"] >= 8 / 9
    # the reconstructions are not the truths: there is an error, and it is far below the outcomes' spread
    assert 0 < report["overall"]["self_error"] < 0.5 * report["overall"]["gt_spread"]
    # and so are the discs: where they are found in the reconstructions follows each path
    assert report["objects"]["overall"]["accuracy"] >= 8 / 9
    assert report["objects"]["overall"]["members_without_objects"] == 0

    clips = list(grouped_clips(world_test_shards, 64))
    still = [
        {
            **c,
            "generated": ((c["pixel_values"][:1] + 1) / 2).expand(14, -1, -1, -1),
            "ground_truth": (c["pixel_values"] + 1) / 2,
        }
        for c in clips
    ]
    assert counterfactual_report(group_members(still))["overall"]["accuracy"] == pytest.approx(1 / 3)
    # a limit counts clips in `interdyn test`'s order
    assert [c["key"] for c in grouped_clips(world_test_shards, 64, limit=4)] == [c["key"] for c in clips[:4]]


def test_the_demo_report_adds_the_ceiling_row(world_test_shards: str, tmp_path: Path) -> None:
    """`python -m interdyn.world.report --ceiling_clips N` puts the VAE's ceiling in the demo's table, scored on
    the first N test clips (here one group of 3)."""
    from interdyn.world.report import CEILING_ROW, main

    args = ["--out", str(tmp_path), "--svd", str(WORLD / "svd"), "--test_shards", world_test_shards]
    assert main([*args, "--ceiling_clips", "3"]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith(f"| {CEILING_ROW}")]
    assert len(rows) == 1
    titles = [cell.strip() for cell in lines[0].strip("|").split("|")]
    cells = dict(zip(titles, (cell.strip() for cell in rows[0].strip("|").split("|")), strict=True))
    assert float(cells["chance"]) == pytest.approx(0.33) and float(cells["counterf. acc."]) >= 0.66
    assert float(cells["counterf. acc. (discs)"]) >= 0.66  # the reconstructions' discs follow their paths
    assert cells["SSIM"] == "-"  # the sample metrics have no meaning for reconstructions


def test_the_report_says_what_is_wrong_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """User errors end the report with exit code 2 and one sentence, before any model is loaded."""
    from interdyn.world.report import main

    assert main(["--out", str(tmp_path), "--ceiling_clips", "-1"]) == 2
    assert "--ceiling_clips must be 0" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--run", "no-equals-sign"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--run", f"a={tmp_path / 'missing'}"]) == 2
    assert "run `interdyn test` for this model first" in capsys.readouterr().err
    assert not (tmp_path / "table.md").exists()


def test_the_report_pictures_one_whole_group(world_test_shards: str) -> None:
    """The pictures' group: three clips with one first frame and three different driver paths."""
    from interdyn.world.report import first_group

    group = first_group(world_test_shards, 64, members=3)
    assert group["pixel_values"].shape == (3, 14, 3, 64, 64) and group["control"].shape[:2] == (3, 14)
    assert all(key.startswith("synthetic-test-000000_v") for key in group["keys"])
    first = group["pixel_values"][:, 0]
    # one scene: the first frames differ only by each clip's own lossy encoding
    assert all(float((first[0] - first[m]).abs().mean()) < 0.01 for m in (1, 2))
    assert not torch.equal(group["control"][0], group["control"][1])


def test_the_counterfactual_grid_shows_each_path_twice_as_large(
    world_test_shards: str, tmp_path: Path
) -> None:
    """The demo's pictures on one group: the grid has a row per driver path (control | each model's last
    frame | truth) at twice the world's 64 px. Every row starts from the same noise, so without control
    the three rows' samples are all but the same picture, while the shipped branch's differ with their
    control, as the truths do."""
    from PIL import Image

    from interdyn.world.report import first_group, pictures

    group = first_group(world_test_shards, 64, members=3)
    written = pictures(
        str(WORLD / "svd"), {"shipped": str(WORLD / "branch")}, group, tmp_path, 2, 42, (16, 32, 64)
    )
    assert sorted(p.name for p in written) == [
        "contact_sheet.mp4",
        "contact_sheet.png",
        "counterfactual_grid.mp4",
        "counterfactual_grid.png",
    ]
    with Image.open(tmp_path / "counterfactual_grid.png") as image:
        grid = np.asarray(image.convert("RGB")).astype(np.float32) / 255
    tile = 128
    assert grid.shape[1] == 4 * tile  # control | no control | shipped | truth
    row_height = grid.shape[0] // 3
    strip = row_height - tile  # each row's labels above its tiles
    assert grid.shape[0] == 3 * row_height and strip > 0

    def panel(row: int, column: int) -> np.ndarray:
        top = row * row_height + strip
        return grid[top : top + tile, column * tile : (column + 1) * tile]

    # each tile is a 64 px frame with every pixel doubled
    assert np.array_equal(panel(0, 3)[::2, ::2], panel(0, 3)[1::2, 1::2])

    def spread(column: int) -> float:
        return max(
            float(np.abs(panel(a, column) - panel(b, column)).mean()) for a, b in ((0, 1), (0, 2), (1, 2))
        )

    assert spread(0) > 0.01 and spread(3) > 0.01  # three controls, three outcomes
    assert spread(1) < 0.006  # without control: one video, up to the first frames' encodings
    assert spread(2) > 5 * spread(1)  # the branch follows its control; the SVD alone does not see it
