"""The frozen encoders' precision inside a training step: under ``bf16-mixed`` Lightning wraps
``training_step`` in autocast, which must not undo the float32 encoding of a ``force_upcast`` VAE. The
latents encoded in the step must be those the latent cache (``make latents``) stores for the same clip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from data_prep.latents import ConditioningEncoder
from interdyn.models.conditioning import sample_video_latents
from interdyn.training.module import InterDynModule
from tests.helpers import TINY_CONTROL_CHANNELS


@pytest.fixture(scope="module")
def bf16_module(tiny_svd_folder: Path) -> InterDynModule:
    """The ssv2 recipe's storage: frozen SVD in bfloat16 (the force_upcast VAE stays in float32)."""
    return InterDynModule(
        svd=str(tiny_svd_folder),
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        memory={"frozen_dtype": "bfloat16"},
        sampling={"noise_aug_strength": 0.0},
    )


def pixels(seed: int = 0) -> torch.Tensor:
    """``(2, 4, 3, 64, 64)`` frames in ``[-1, 1]`` with structure at every scale (not flat noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 4, 3, 8, 8, generator=g) * 2 - 1
    fine = torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(64, 64), mode="bilinear")
    return (fine + 0.1 * torch.randn(fine.shape, generator=g)).clamp(-1, 1).unflatten(0, (2, 4))


def test_step_encodes_as_the_cache_under_bf16_mixed(bf16_module, tiny_svd_folder):
    """In-step conditioning under Lightning's bf16-mixed autocast equals the cached conditioning of the
    same frames (the cache is built outside autocast, the VAE in float32) to float32 rounding."""
    model = bf16_module
    assert model.vae.dtype == torch.float32 and model.image_encoder.dtype == torch.bfloat16
    video = pixels()
    encoder = ConditioningEncoder(str(tiny_svd_folder), "cpu", torch.bfloat16, noise_aug=0.0, chunk=16)
    clips = [{"pixel_values": clip, "key": f"clip{i}"} for i, clip in enumerate(video)]
    cached = encoder(clips, seed=0)  # what data_prep/latents.py stores: (mean, std, image latent, embeds)
    mean, std, cached_image, cached_embeds = (
        torch.stack(field).float() for field in zip(*cached, strict=True)
    )
    cached_latents = sample_video_latents(
        mean, std, model.vae.config.scaling_factor, torch.Generator().manual_seed(3)
    )

    autocast = MixedPrecision("bf16-mixed", "cpu").forward_context()  # what wraps training_step
    with autocast:
        latents, embeds, image_latents = model.encode_conditions(video, torch.Generator().manual_seed(3))

    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, cached_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image_latents, cached_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeds, cached_embeds.view_as(embeds), rtol=1e-5, atol=1e-5)


def test_the_comparison_sees_bf16_encoding(bf16_module):
    """The tolerance above can fail: the same VAE run in bfloat16 gives latents off by far more."""
    video = pixels()
    with torch.no_grad():
        exact = bf16_module.vae.encode(video[:, 0]).latent_dist.mode()
        rounded = bf16_module.vae.to(torch.bfloat16).encode(video[:, 0].bfloat16()).latent_dist.mode()
    bf16_module.vae.to(torch.float32)
    assert (exact - rounded.float()).abs().max() > 1e-3
