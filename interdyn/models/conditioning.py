"""SVD's conditioning, shared by training, the latent cache and sampling.

Each function computes what diffusers' ``StableVideoDiffusionPipeline`` computes (the reference, checked
by ``tests/models/test_svd_oracle.py``):

- CLIP: the first frame in ``[-1, 1]`` resized with SVD's own ``_resize_with_antialiasing`` (a Gaussian
  blur sized by the downscale factor, then bicubic with ``align_corners=True``), mapped with
  ``(x + 1) / 2`` *without* clamping, CLIP-normalised; ``image_embeds`` is the cross-attention context.
- Image latent: first frame plus ``noise_aug_strength * N(0, 1)``, VAE posterior *mode*, not scaled.
- Video latents: VAE posterior sample times the scaling factor.
- VAE precision: a VAE whose config sets ``force_upcast`` (SVD's does) encodes in float32 even when it is
  stored in float16 / bfloat16, as SVD's pipeline does; decoding runs in the stored dtype, as there.
- Autocast: the encoders (VAE encoding, CLIP) run with autocast off, in their stored dtype (float32 for
  an upcast VAE). Lightning's ``bf16-mixed`` wraps each training step in autocast, which would otherwise
  run the VAE's convolutions in bfloat16 and make the step's latents differ from the cached ones
  (``make latents`` encodes outside autocast).
- ``added_time_ids``: ``[fps_id, motion_bucket_id, noise_aug_strength]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKLTemporalDecoder
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from transformers import CLIPVisionModelWithProjection

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixel_values(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[-1, 1]`` -> CLIP's normalised ``(B, 3, size, size)`` float32 input, exactly as
    SVD prepares it (its antialiased resize, then ``(x + 1) / 2`` with no clamp, then CLIP's mean/std)."""
    x = _resize_with_antialiasing(image.float(), (size, size))
    x = (x + 1.0) / 2.0  # SVD does not clamp the bicubic overshoot
    mean = device_constant(CLIP_MEAN, x.device, x.dtype).view(1, 3, 1, 1)
    std = device_constant(CLIP_STD, x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_image_embeds(image_encoder: CLIPVisionModelWithProjection, image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, 1, projection_dim)`` CLIP image embeddings, computed in the
    encoder's stored dtype whatever autocast is active (as the latent cache computes them)."""
    with autocast_off(image.device):  # also the resize: its blur is a convolution
        x = clip_pixel_values(image, image_encoder.config.image_size).to(image_encoder.dtype)
        return image_encoder(pixel_values=x).image_embeds.unsqueeze(1)


@contextmanager
def autocast_off(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device``'s type for the block, so that a module runs in its own dtype even
    inside Lightning's mixed-precision step."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def needs_upcast(vae: AutoencoderKLTemporalDecoder) -> bool:
    """True when the VAE asks to encode in float32 (``force_upcast``) but is stored in a half dtype."""
    return bool(vae.config.get("force_upcast", False)) and vae.dtype in (torch.float16, torch.bfloat16)


@contextmanager
def encoding_precision(vae: AutoencoderKLTemporalDecoder) -> Iterator[torch.dtype]:
    """Cast a ``force_upcast`` VAE stored in half precision to float32 for the duration of the block (as
    SVD's pipeline does around its first-frame encoding) and back afterwards; yields the dtype to feed it.
    Keeping such a VAE in float32 (as the training module and the cache builder do) makes this free.
    Autocast is off inside the block: under ``bf16-mixed`` it would run the float32 VAE in bfloat16."""
    stored = vae.dtype
    upcast = needs_upcast(vae)
    if upcast:
        vae.to(torch.float32)
    try:
        with autocast_off(vae.device):
            yield vae.dtype
    finally:
        if upcast:
            vae.to(stored)


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, made once per device and dtype: building it anew in every
    training step would be a blocking host-to-device copy each time. Read-only: do not modify it in place."""
    key = (tuple(values), torch.device(device), dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, device=device, dtype=dtype)
    return _CONSTANTS[key]


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
    image = image.float()
    noisy = image + noise_aug_strength * _randn_like(image, generator) if noise_aug_strength else image
    with encoding_precision(vae) as dtype:
        return vae.encode(noisy.to(dtype)).latent_dist.mode()


def encode_video_posterior(
    vae: AutoencoderKLTemporalDecoder, video: torch.Tensor, chunk_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> the VAE posterior's ``(mean, std)``, each ``(B, T, 4, H/8, W/8)``
    and unscaled. Frames are encoded ``chunk_size`` at a time to bound activation memory."""
    b, t = video.shape[:2]
    means, stds = [], []
    with encoding_precision(vae) as dtype:
        for chunk in video.flatten(0, 1).to(dtype).split(chunk_size):
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
    """``(B, T, 4, h, w)`` scaled latents -> ``(B, T, 3, 8h, 8w)`` frames in ``[-1, 1]`` (float32), decoded in
    the VAE's stored dtype as SVD's pipeline decodes.

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
    """``(batch_size, 3)`` tensor ``[fps_id, motion_bucket_id, noise_aug_strength]`` (a read-only view)."""
    ids = device_constant((float(fps_id), float(motion_bucket_id), float(noise_aug_strength)), device, dtype)
    return ids.expand(batch_size, 3)
