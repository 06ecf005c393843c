"""How Wan2.2 TI2V conditions on the first frame, and the denoiser call shared by sampling and training.

TI2V (diffusers' ``WanImageToVideoPipeline`` with ``expand_timesteps=True``) has no image channels: the
first frame's VAE latent *replaces* the first latent frame of the transformer's input, and that frame's
tokens get timestep 0 (clean) while all others get the step's timestep. Latents are normalised per
channel with the VAE's ``latents_mean`` / ``latents_std``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from interdyn.models.wan.controlnet import WanControlNetModel
from interdyn.models.wan.transformer import WanTransformer3DControlModel


def _latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents_mean`` and ``1 / latents_std`` shaped ``(1, C, 1, 1, 1)`` on ``like``'s device and dtype."""
    channels = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(
        like.device, like.dtype
    )
    return mean, inv_std


def normalize_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> the transformer's normalised latents."""
    mean, inv_std = _latent_stats(vae, latents)
    return (latents - mean) * inv_std


def denormalize_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """The transformer's normalised latents -> raw VAE latents (to decode)."""
    mean, inv_std = _latent_stats(vae, latents)
    return latents / inv_std + mean


def encode_image_latents(vae: AutoencoderKLWan, image: torch.Tensor) -> torch.Tensor:
    """First frames ``(B, 3, H, W)`` in ``[-1, 1]`` -> normalised latents ``(B, C, 1, H/16, W/16)`` (the mode of
    the posterior, encoded in the VAE's dtype), float32."""
    latents = vae.encode(image.unsqueeze(2).to(vae.dtype)).latent_dist.mode()
    return normalize_latents(vae, latents.float())


def encode_video_latents(
    vae: AutoencoderKLWan, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False
) -> torch.Tensor:
    """Videos ``(B, T, 3, H, W)`` in ``[-1, 1]`` (``T = 1 + 4k``) -> normalised latents ``(B, C, 1 + k, H/16,
    W/16)``, float32: the posterior's mode, or a sample of it with ``sample``."""
    dist = vae.encode(video.transpose(1, 2).to(vae.dtype)).latent_dist
    latents = dist.sample(generator) if sample else dist.mode()
    return normalize_latents(vae, latents.float())


def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents ``(B, C, F, h, w)`` -> videos ``(B, T, 3, H, W)`` in about ``[-1, 1]``."""
    raw = denormalize_latents(vae, latents.to(vae.dtype))
    return vae.decode(raw, return_dict=False)[0].transpose(1, 2)


def with_first_frame(latents: torch.Tensor, known_latents: torch.Tensor) -> torch.Tensor:
    """``latents`` ``(B, C, F, h, w)`` with their first ``k`` latent frames replaced by ``known_latents``
    ``(B, C, k, h, w)``: the image latent (``k = 1``, TI2V), or a long video's frames already made."""
    k = known_latents.shape[2]
    return torch.cat([known_latents.to(latents.dtype), latents[:, :, k:]], dim=2)


def token_timesteps(
    timestep: torch.Tensor | float, latents: torch.Tensor, patch_size: tuple[int, ...], known: int = 1
) -> torch.Tensor:
    """Per-token timesteps ``(B, L)``: 0 on the tokens of the first ``known`` latent frames (the clean
    conditioning: the image's alone in TI2V's ``expand_timesteps``), ``timestep`` (a scalar or one per sample
    ``(B,)``) on every other token."""
    batch, _, frames, height, width = latents.shape
    p_t, p_h, p_w = patch_size
    if p_t != 1:
        raise ValueError(f"TI2V timesteps need a temporal patch size of 1, got {p_t}")
    per_frame = (height // p_h) * (width // p_w)
    t = torch.as_tensor(timestep, dtype=torch.float32, device=latents.device).reshape(-1, 1)
    keep = torch.ones(1, frames * per_frame, dtype=torch.float32, device=latents.device)
    keep[:, : known * per_frame] = 0
    return (keep * t).expand(batch, -1)


def predict_flow(
    transformer: WanTransformer3DControlModel,
    latent_input: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    controlnet: WanControlNetModel | None = None,
    control: torch.Tensor | None = None,
    control_tokens: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """The transformer's velocity prediction for ``latent_input`` ``(B, C, F, h, w)``, with the branch's
    residuals when a branch and its control are given and ``conditioning_scale`` is not 0 (the branch is
    then not run). ``timestep`` is ``(B,)`` or per token ``(B, L)``."""
    dtype = transformer.dtype
    x = latent_input.to(dtype)
    tokens = transformer.embed(x, timestep, prompt_embeds.to(dtype))
    residuals = None
    use_branch = controlnet is not None and conditioning_scale != 0
    if use_branch and (control is not None or control_tokens is not None):
        residuals = controlnet(
            x, tokens, control=control, control_tokens=control_tokens, conditioning_scale=conditioning_scale
        ).by_layer()
    return transformer.head(transformer.run_blocks(tokens, residuals), tokens)
