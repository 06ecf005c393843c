"""SVD's conditioning, shared by training and sampling (spec.md section 2).

- CLIP: first frame resized with antialiasing to the encoder's size, CLIP-normalised, ``image_embeds``.
- Image latent: first frame plus ``noise_aug_strength * N(0, 1)``, VAE posterior *mode*, not scaled.
- Video latents: VAE posterior sample times the scaling factor.
- ``added_time_ids``: ``[fps_id, motion_bucket_id, noise_aug_strength]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder
from transformers import CLIPVisionModelWithProjection

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_image_embeds(image_encoder: CLIPVisionModelWithProjection, image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, 1, projection_dim)`` CLIP image embeddings."""
    size = image_encoder.config.image_size
    x = F.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(image_encoder.dtype)
    return image_encoder(pixel_values=x).image_embeds.unsqueeze(1)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device so that CPU generators give the same numbers on any device.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


def encode_image_latents(
    vae: AutoencoderKLTemporalDecoder,
    image: torch.Tensor,
    noise_aug_strength: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, 4, H/8, W/8)``: noise-augmented, posterior mode, unscaled.

    With ``noise_aug_strength == 0`` no noise is drawn (the generator is left untouched)."""
    noisy = image + noise_aug_strength * _randn_like(image, generator) if noise_aug_strength else image
    return vae.encode(noisy.to(vae.dtype)).latent_dist.mode()


def encode_video_posterior(
    vae: AutoencoderKLTemporalDecoder, video: torch.Tensor, chunk_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> the VAE posterior's ``(mean, std)``, each ``(B, T, 4, H/8, W/8)``
    and unscaled. Frames are encoded ``chunk_size`` at a time to bound activation memory."""
    b, t = video.shape[:2]
    means, stds = [], []
    for chunk in video.flatten(0, 1).to(vae.dtype).split(chunk_size):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means).unflatten(0, (b, t)), torch.cat(stds).unflatten(0, (b, t))


def sample_video_latents(
    mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A posterior sample ``mean + std * eps`` times the VAE scaling factor (float32). Shared by the
    in-step encoder and the cached conditioning, so both draw the same noise from the same generator."""
    mean, std = mean.float(), std.float()
    return (mean + std * _randn_like(mean, generator)) * scaling_factor


def encode_video_latents(
    vae: AutoencoderKLTemporalDecoder,
    video: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk_size: int = 16,
) -> torch.Tensor:
    """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> ``(B, T, 4, H/8, W/8)`` float32: posterior sample times the
    scaling factor (see :func:`encode_video_posterior`, :func:`sample_video_latents`)."""
    mean, std = encode_video_posterior(vae, video, chunk_size)
    return sample_video_latents(mean, std, vae.config.scaling_factor, generator)


def decode_latents(
    vae: AutoencoderKLTemporalDecoder, latents: torch.Tensor, chunk_size: int = 14
) -> torch.Tensor:
    """``(B, T, 4, h, w)`` scaled latents -> ``(B, T, 3, 8h, 8w)`` frames in ``[-1, 1]`` (float32).

    The temporal decoder mixes frames within a chunk, so ``chunk_size`` should be the clip length
    unless memory forbids it.
    """
    z = (latents / vae.config.scaling_factor).to(vae.dtype)
    videos = []
    for clip in z:  # chunks never straddle two videos
        frames = [
            vae.decode(chunk, num_frames=chunk.shape[0]).sample.float() for chunk in clip.split(chunk_size)
        ]
        videos.append(torch.cat(frames))
    return torch.stack(videos).clamp(-1.0, 1.0)


def make_added_time_ids(
    fps_id: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(batch_size, 3)`` tensor ``[fps_id, motion_bucket_id, noise_aug_strength]``."""
    ids = torch.tensor([fps_id, motion_bucket_id, noise_aug_strength], device=device, dtype=dtype)
    return ids.expand(batch_size, 3)
