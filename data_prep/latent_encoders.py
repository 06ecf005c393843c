"""The encoders of the latent cache (``make latents``, :mod:`data_prep.latents`): SVD's VAE and CLIP, or the
Wan backbone's VAE, on one device, turning batches of decoded clips into what a ``cond.npz`` field holds
(:mod:`interdyn.data.cache`)."""

from __future__ import annotations

import json
from typing import Any

import torch

from interdyn.contract import to_contract
from interdyn.data.cache import pack_cache, pack_wan_cache
from interdyn.data.sampling import key_seed
from interdyn.models.conditioning import (
    clip_image_embeds,
    encode_image_latents,
    encode_video_posterior,
)
from interdyn.models.svd import cast_frozen, get_encoders
from interdyn.models.wan.components import get_wan_vae
from interdyn.models.wan.ti2v import encode_video_latents


class ConditioningEncoder:
    """SVD's frozen VAE and CLIP on one device, encoding batches of decoded clips."""

    def __init__(self, svd: Any, device: str, dtype: torch.dtype, noise_aug: float, chunk: int) -> None:
        # The VAE is read in float32, as the training module reads it: SVD's (force_upcast) encodes in
        # float32 and must not be rounded to `dtype` on the way; any other VAE is cast to `dtype`.
        self.vae, self.clip = get_encoders(svd, torch_dtype=dtype, vae_float32=True)
        upcast = bool(self.vae.config.get("force_upcast", False))
        for model in (self.clip,) if upcast else (self.vae, self.clip):
            cast_frozen(model, dtype)
        for model in (self.vae, self.clip):
            model.to(device).eval().requires_grad_(False)
        self.device, self.noise_aug, self.chunk = torch.device(device), noise_aug, chunk

    @torch.no_grad()
    def __call__(self, clips: list[dict[str, Any]], seed: int) -> list[tuple[torch.Tensor, ...]]:
        batch = to_contract({"pixel_values": torch.stack([c["pixel_values"] for c in clips]).to(self.device)})
        pixels = batch["pixel_values"]
        mean, std = encode_video_posterior(self.vae, pixels, self.chunk)
        first = pixels[:, 0]
        embeds = clip_image_embeds(self.clip, first)
        if self.noise_aug:  # one fixed draw per sample, seeded by its key
            noise = torch.stack(
                [
                    torch.randn(
                        first.shape[1:], generator=torch.Generator().manual_seed(key_seed(seed, c["key"]))
                    )
                    for c in clips
                ]
            )
            first = first + self.noise_aug * noise.to(first.device, first.dtype)
        image_latents = encode_image_latents(self.vae, first, 0.0)
        return [(mean[i], std[i], image_latents[i], embeds[i]) for i in range(len(clips))]

    @staticmethod
    def pack(clip: dict[str, Any], encoded: tuple[torch.Tensor, ...], settings: dict[str, Any]) -> bytes:
        """A clip's ``cond.npz`` bytes from what :meth:`__call__` gave for it."""
        mean, std, image_latent, embed = encoded
        indices = clip["source_indices"].tolist()
        meta = {**settings, "effective_fps": clip["fps"]}
        return pack_cache(
            mean, std, image_latent, embed, clip["control"], indices, meta, settings["store_dtype"]
        )


class WanLatentEncoder:
    """The Wan backbone's VAE (float32) on one device, encoding batches of decoded clips to their normalised
    latents as the Wan module's training step does (the posterior's mode)."""

    def __init__(self, wan: Any, device: str) -> None:
        self.vae = get_wan_vae(json.loads(wan) if isinstance(wan, str) and wan.startswith("{") else wan)
        self.vae.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, clips: list[dict[str, Any]], seed: int) -> list[tuple[torch.Tensor, ...]]:
        batch = to_contract({"pixel_values": torch.stack([c["pixel_values"] for c in clips]).to(self.device)})
        latents = encode_video_latents(self.vae, batch["pixel_values"])
        return [(latents[i],) for i in range(len(clips))]

    @staticmethod
    def pack(clip: dict[str, Any], encoded: tuple[torch.Tensor, ...], settings: dict[str, Any]) -> bytes:
        """A clip's ``cond.npz`` bytes (Wan's) from what :meth:`__call__` gave for it."""
        indices = clip["source_indices"].tolist()
        meta = {**settings, "effective_fps": clip["fps"]}
        return pack_wan_cache(encoded[0], clip["control"], indices, meta, settings["store_dtype"])
