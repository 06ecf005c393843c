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
    from data_prep.synthetic import World, make_video
    from interdyn.contract import masks_to_control

    rng = np.random.default_rng(seed)
    videos = [make_video(rng, World(64, 64, friction=40.0), 14, 7.0) for _ in range(count)]
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
    from interdyn.module import InterDynModule

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
