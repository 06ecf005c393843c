"""A base with another window length (SVD-XT: 25 frames): configs/svd_xt.yaml, and a tiny random 25-frame
SVD whose context branch trains a step and samples a long driver in 25-frame windows."""

from __future__ import annotations

import torch

from interdyn.commands.config import read_config
from interdyn.data import MovingShapesDataset
from interdyn.models.long import plan_windows
from interdyn.models.svd import TINY_ARCHITECTURE
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT, TINY_CONTROL_CHANNELS, randomize_

XT = 25
TINY_XT = {**TINY_ARCHITECTURE, "unet": {**TINY_ARCHITECTURE["unet"], "num_frames": XT}, "seed": 0}


def test_the_overlay_names_the_xt_base_and_its_clips() -> None:
    config = read_config([REPO_ROOT / "configs" / "ssv2.yaml", REPO_ROOT / "configs" / "svd_xt.yaml"])
    assert config["model"]["svd"] == "stabilityai/stable-video-diffusion-img2vid-xt"
    clip = config["data"]["init_args"]["clip"]
    assert (clip["num_frames"], clip["fps"], clip["height"], clip["width"]) == (XT, 7.0, 256, 384)
    assert config["trainer"]["logger"]["init_args"]["name"] == "svd_xt"
    assert config["data"]["init_args"]["batch_size"] * config["trainer"]["accumulate_grad_batches"] == 4


def test_a_context_branch_trains_and_samples_on_a_25_frame_base() -> None:
    torch.manual_seed(0)
    module = InterDynModule(
        svd=TINY_XT,
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        objective={"context_frames_max": 4},
        sampling={"num_inference_steps": 1, "max_guidance_scale": 1.0, "continuation": "context"},
    )
    assert module.unet.config.num_frames == XT and module.controlnet.config.context_window == XT
    clip = MovingShapesDataset(1, num_frames=XT, height=32, width=32, seed=3)[0]
    pixels, control = clip["pixel_values"][None], clip["control"][None]
    for i, conv in enumerate(
        [*module.controlnet.controlnet_down_blocks, module.controlnet.controlnet_mid_block]
    ):
        randomize_(conv, seed=i)  # as if a trained XT branch: its residuals reach the UNet
    optimizer = module.configure_optimizers()
    module.train()
    module.compute_loss(pixels, control, drop_image=True).backward()  # a 25-frame clip, random k
    before = module.controlnet.controlnet_context_embedding.weight.clone()
    optimizer.step()
    assert not torch.equal(before, module.controlnet.controlnet_context_embedding.weight)

    driver = torch.cat([control, control.flip(1)[:, 1:16]], dim=1)  # 40 frames
    out = module.pipeline()(
        pixels[:, 0],
        driver,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **module.sampling.as_kwargs(),
    )
    plan = plan_windows(40, XT, 4)
    assert [(w.start, w.stop) for w in plan] == [(0, 25), (15, 40)]
    assert out.frames.shape[:2] == (1, 40) and [w.shape[1] for w in out.windows] == [XT, XT]
    torch.testing.assert_close(out.windows[1][:, : plan[1].known], out.windows[0][:, 15:])
