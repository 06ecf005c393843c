"""The oracle: with no branch (or the branch at scale 0, or a fresh branch) interdyn's Wan pipeline gives
diffusers' WanImageToVideoPipeline (expand_timesteps, Wan2.2 TI2V) output on shared tiny weights, seeds
and prompt embeddings."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from interdyn.models.wan import InterDynWanPipeline, WanControlNetModel
from tests.models.wan.helpers import (
    FRAMES,
    HEIGHT,
    WIDTH,
    inputs,
    randomize_projections_,
    stock_pipeline,
    tiny_branch,
)

STEPS = 3


def _stock(wan, x, guidance: float, output_type: str) -> torch.Tensor:
    kw = {"negative_prompt_embeds": x["negative_prompt_embeds"]} if guidance > 1 else {}
    return stock_pipeline(wan)(
        image=x["image01"],
        prompt_embeds=x["prompt_embeds"],
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(7),
        output_type=output_type,
        **kw,
    ).frames


def _ours(wan, x, guidance: float, output_type: str, branch=None, scale: float = 1.0) -> torch.Tensor:
    pipe = InterDynWanPipeline.from_components(wan, branch)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        x["image"],
        x["prompt_embeds"],
        control=x["control"] if branch is not None else None,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        negative_prompt_embeds=x["negative_prompt_embeds"],
        conditioning_scale=scale,
        generator=torch.Generator().manual_seed(7),
        output_type=output_type,
    ).frames


@pytest.mark.parametrize(
    ("scheduler", "guidance"), [("unipc", 1.0), ("unipc", 5.0), ("flow_euler", 1.0)], ids=str
)
def test_pipeline_without_branch_is_diffusers_ti2v(wan, scheduler, guidance):
    if scheduler == "flow_euler":
        wan.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    x = inputs()
    for output_type in ("latent", "pt"):
        expected = _stock(wan, x, guidance, output_type)
        got = _ours(wan, x, guidance, output_type)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5, output_type
    assert got.shape == (1, FRAMES, 3, HEIGHT, WIDTH)


def test_branch_at_scale_zero_or_fresh_changes_nothing(wan):
    x = inputs()
    plain = _ours(wan, x, 1.0, "latent")
    acting = randomize_projections_(tiny_branch(wan))
    assert torch.equal(_ours(wan, x, 1.0, "latent", branch=acting, scale=0.0), plain)
    fresh = _ours(wan, x, 1.0, "latent", branch=tiny_branch(wan))
    assert (fresh - plain).abs().max().item() < 1e-6


def test_a_branch_with_weights_changes_the_video_and_keeps_the_first_frame(wan):
    x = inputs()
    plain = _ours(wan, x, 1.0, "latent")
    controlled = _ours(wan, x, 1.0, "latent", branch=randomize_projections_(tiny_branch(wan)))
    assert (controlled - plain)[:, :, 1:].abs().mean().item() > 1e-2
    assert torch.equal(controlled[:, :, :1], plain[:, :, :1])  # the conditioning image latent, both times


def test_guidance_needs_negative_embeddings_and_sizes_are_checked(wan):
    pipe = InterDynWanPipeline.from_components(wan)
    x = inputs()
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        pipe(x["image"], x["prompt_embeds"], num_frames=FRAMES, num_inference_steps=1, guidance_scale=3.0)
    with pytest.raises(ValueError, match="multiples of 32"):
        pipe(x["image"][..., :48], x["prompt_embeds"], num_frames=FRAMES, num_inference_steps=1)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        pipe(x["image"], x["prompt_embeds"], num_frames=8, num_inference_steps=1)
    mismatched = WanControlNetModel.from_transformer(  # x8 pixels: 2 x 2^2
        wan.transformer, vae_scale_factor_spatial=8, conditioning_embedding_out_channels=(8, 8, 8)
    )
    with pytest.raises(ValueError, match="build the branch for this backbone"):
        InterDynWanPipeline.from_components(wan, mismatched)
