"""Tiny Wan2.2 TI2V models and inputs shared by the Wan tests (tests/models/wan, tests/training)."""

from __future__ import annotations

import copy

import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

from interdyn.models.wan import WanComponents, WanControlNetModel, build_wan
from interdyn.models.wan.components import TINY_WAN_ARCHITECTURE

# 9 frames (1 + 4 * 2: three latent frames) at 64 x 96 (4 x 6 latents, 2 x 3 tokens per frame): a
# non-square grid, so that a swapped height and width cannot pass.
FRAMES, HEIGHT, WIDTH = 9, 64, 96
LATENT_SHAPE = (48, 3, 4, 6)
TOKENS = 3 * 2 * 3
TEXT_DIM, PROMPT_LEN = TINY_WAN_ARCHITECTURE["transformer"]["text_dim"], 8
TINY_MASK_CHANNELS = (8, 8, 8, 16)


def tiny_wan(seed: int = 0) -> WanComponents:
    """The tiny random Wan2.2 TI2V (diffusers' own classes, 48 latent channels, x4 x16 x16 VAE)."""
    return build_wan({**TINY_WAN_ARCHITECTURE, "seed": seed})


def tiny_branch(wan: WanComponents, layers: str | list[int] = "half") -> WanControlNetModel:
    """A fresh branch on the tiny transformer (zero projections)."""
    return WanControlNetModel.from_transformer(
        wan.transformer, layers=layers, conditioning_embedding_out_channels=TINY_MASK_CHANNELS, vae=wan.vae
    )


def randomize_projections_(
    branch: WanControlNetModel, seed: int = 1, scale: float = 0.2
) -> WanControlNetModel:
    """Non-zero output projections and mask-encoder projection (a branch that acts)."""
    gen = torch.Generator().manual_seed(seed)
    parts = [*branch.controlnet_blocks.parameters(), *branch.controlnet_cond_embedding.conv_out.parameters()]
    with torch.no_grad():
        for p in parts:
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return branch


def stock_pipeline(wan: WanComponents) -> WanImageToVideoPipeline:
    """diffusers' own TI2V pipeline on the same weights: a stock transformer holding the tiny one's
    weights, the same VAE, a copy of the scheduler; no text encoder."""
    stock = WanTransformer3DModel.from_config(wan.transformer.config)
    stock.load_state_dict(wan.transformer.state_dict())
    pipe = WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=wan.vae,
        scheduler=copy.deepcopy(wan.scheduler),
        transformer=stock,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    """A first frame in [0, 1] (``image01``) and [-1, 1] (``image``), prompt and negative prompt embeddings,
    driver masks ``(B, T, 3, H, W)`` in {-1, 1} (a moving square)."""
    gen = torch.Generator().manual_seed(seed)
    image01 = torch.rand(batch, 3, HEIGHT, WIDTH, generator=gen)
    control = -torch.ones(batch, FRAMES, 3, HEIGHT, WIDTH)
    for t in range(FRAMES):
        control[:, t, :, 16:40, 4 + 6 * t : 28 + 6 * t] = 1.0
    return {
        "image01": image01,
        "image": image01 * 2 - 1,
        "prompt_embeds": torch.randn(1, PROMPT_LEN, TEXT_DIM, generator=gen),
        "negative_prompt_embeds": torch.randn(1, PROMPT_LEN, TEXT_DIM, generator=gen),
        "control": control,
    }
