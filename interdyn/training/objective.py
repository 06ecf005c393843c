"""The training objective of SVD, as the paper trains it: EDM loss on VAE latents, first-frame conditioning
with noise augmentation and image drop for classifier-free guidance; with a control branch, its residuals
are added to the frozen UNet's.

:class:`EDMObjective` holds it as methods of the module that owns the networks, so that they read its
settings and device: :class:`~interdyn.training.module.InterDynModule` (the branch on a frozen SVD) and
the world's :class:`~interdyn.world.base.BaseVideoModule` (SVD's own UNet, no branch) share it.
"""

from __future__ import annotations

from typing import Any

import torch

from interdyn.errors import ConfigError
from interdyn.models.conditioning import (
    clip_image_embeds,
    encode_image_latents,
    encode_video_latents,
    make_added_time_ids,
    sample_video_latents,
)
from interdyn.models.controlnet import ControlNetSDVModel, context_input
from interdyn.models.edm import denoised, edm_loss, motion_weights, sample_sigmas, unet_input
from interdyn.models.sampling import SamplingSettings
from interdyn.models.unet import UNetSpatioTemporalControlModel
from interdyn.training.settings import MemorySettings, ObjectiveSettings


def _randn(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device, like.dtype)


def context_branch(branch: ControlNetSDVModel, context_frames_max: int, window: int) -> ControlNetSDVModel:
    """The branch to train for ``context_frames_max`` (:class:`ObjectiveSettings`): ``branch`` itself when it is
    0 or ``branch`` is a context branch of that range, else a context branch made from it (new channels at
    zero, so it starts equal to ``branch``); ``window`` is the base's (its UNet's ``num_frames``). One sentence
    for a range the window cannot hold or a context branch trained on another window length."""
    recorded = branch.config.get("context_window")
    if branch.is_context_branch and recorded != window:
        raise ConfigError(
            f"the context branch was trained on windows of {recorded} frames, but the base's window is {window} "
            "frames; fine-tune a plain branch (or one trained on this base) instead"
        )
    if context_frames_max == 0 or context_frames_max == branch.config.get("context_frames", 0):
        return branch
    if context_frames_max >= window:
        raise ConfigError(
            f"context_frames_max must be smaller than the model's window of {window} frames, got {context_frames_max}"
        )
    return ControlNetSDVModel.from_branch(branch, context_frames_max, window)


class EDMObjective:
    """Conditioning, noise draws and the EDM loss of SVD's UNet, with the control branch when there is one.

    A mixin for a ``torch.nn.Module`` with the attributes below: the networks (``controlnet`` None for
    SVD alone) and its settings: ``objective`` (the loss's draws), ``sampling`` (the added time ids, the
    noise augmentation and the branch's scale) and ``memory`` (encoder offloading, VAE chunks).
    """

    unet: UNetSpatioTemporalControlModel
    controlnet: ControlNetSDVModel | None
    vae: Any
    image_encoder: Any
    device: torch.device
    objective: ObjectiveSettings
    sampling: SamplingSettings
    memory: MemorySettings

    def _encoders_on(self, device: torch.device | str) -> None:
        """With ``offload_encoders``, move the VAE and CLIP image encoder to ``device`` (no-op where they are)."""
        if not self.memory.offload_encoders:
            return
        device = torch.device(device)
        for part in (self.vae, self.image_encoder):
            if next(part.parameters()).device != device:
                part.to(device)

    def added_time_ids(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, 3)`` added time ids from the configured values."""
        s = self.sampling
        return make_added_time_ids(
            s.fps_id, s.motion_bucket_id, s.noise_aug_strength, batch_size, self.device, torch.float32
        )

    def image_keep_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch_size,)`` float mask: 0 where the image conditioning is dropped (prob ``image_drop_prob``)."""
        device = generator.device if generator is not None else self.device
        draws = torch.rand(batch_size, generator=generator, device=device)
        return (draws >= self.objective.image_drop_prob).float().to(self.device)

    def _drop_image(
        self, embeds: torch.Tensor, image_latents: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.objective.image_drop_prob <= 0:
            return embeds, image_latents
        keep = self.image_keep_mask(embeds.shape[0], generator)
        return embeds * keep.view(-1, 1, 1), image_latents * keep.view(-1, 1, 1, 1)

    @torch.no_grad()
    def encode_conditions(
        self, pixel_values: torch.Tensor, generator: torch.Generator | None = None, drop_image: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen encoders: ``(video latents (B,T,4,h,w), CLIP embeds (B,1,D), image latents (B,4,h,w))``.

        With ``drop_image`` the CLIP embedding and image latent of each sample are zeroed with
        probability ``image_drop_prob``.
        """
        self._encoders_on(pixel_values.device)
        first = pixel_values[:, 0]
        latents = encode_video_latents(self.vae, pixel_values, generator, self.memory.vae_chunk_size)
        embeds = clip_image_embeds(self.image_encoder, first).float()
        image_latents = encode_image_latents(
            self.vae, first, self.sampling.noise_aug_strength, generator
        ).float()
        if drop_image:
            embeds, image_latents = self._drop_image(embeds, image_latents, generator)
        return latents.float(), embeds, image_latents

    @torch.no_grad()
    def cached_conditions(
        self,
        cache: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        drop_image: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same three tensors as :meth:`encode_conditions`, from cached conditioning (``make latents``):
        a fresh posterior sample of the stored VAE distribution, drawn from ``generator`` exactly as the
        encoder path draws it, and the stored CLIP embedding and image latent."""
        latents = sample_video_latents(
            cache["latent_mean"], cache["latent_std"], self.vae.config.scaling_factor, generator
        )
        embeds = cache["image_embeds"].float()
        image_latents = cache["image_latents"].float()
        if drop_image:
            embeds, image_latents = self._drop_image(embeds, image_latents, generator)
        return latents, embeds, image_latents

    def _draw_inputs(
        self,
        pixel_values: torch.Tensor | None,
        cache: dict[str, torch.Tensor] | None,
        sigma: torch.Tensor | None,
        generator: torch.Generator | None,
        drop_image: bool,
    ) -> tuple[torch.Tensor, ...]:
        """Clean latents, CLIP embeds, image latents, noise levels and noisy latents of one batch."""
        if cache is not None:
            latents, embeds, image_latents = self.cached_conditions(cache, generator, drop_image)
        elif pixel_values is not None:
            latents, embeds, image_latents = self.encode_conditions(pixel_values, generator, drop_image)
        else:
            raise ValueError("compute_loss needs pixel_values or cache")
        b = latents.shape[0]
        if sigma is None:
            sigma = sample_sigmas(b, self.objective.p_mean, self.objective.p_std, generator, self.device)
        sigma = sigma.to(self.device, torch.float32)
        noisy = latents + sigma.view(b, 1, 1, 1, 1) * _randn(latents.shape, generator, latents)
        return latents, embeds, image_latents, sigma, noisy

    def _draw_per_sample(
        self,
        pixel_values: torch.Tensor | None,
        cache: dict[str, torch.Tensor] | None,
        sigma: torch.Tensor | None,
        generators: list[torch.Generator] | tuple[torch.Generator, ...],
        drop_image: bool,
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`_draw_inputs` of each sample from its own generator, concatenated."""
        per_sample = [
            self._draw_inputs(
                None if pixel_values is None else pixel_values[i : i + 1],
                None
                if cache is None
                else {k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in cache.items()},
                None if sigma is None else sigma[i : i + 1],
                g,
                drop_image,
            )
            for i, g in enumerate(generators)
        ]
        return tuple(torch.cat(p) for p in zip(*per_sample, strict=True))

    def compute_loss(
        self,
        pixel_values: torch.Tensor | None,
        control: torch.Tensor | None,
        sigma: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        drop_image: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        motion_loss_weight: float = 0.0,
        unet: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """EDM loss on one batch (EDM, as the paper trains SVD); with ``cache`` the conditioning comes from
        cached latents and embeddings and ``pixel_values`` is not used.

        With a branch (``controlnet``) its residuals for ``control`` are added to the UNet's; without one
        (``controlnet`` None, ``control`` unused) this is SVD's own objective. ``unet`` replaces the
        module's UNet for this call (e.g. its moving average). ``motion_loss_weight > 0`` weights the loss
        towards the latent positions that change over the clip (:func:`~interdyn.models.edm.motion_weights`);
        0 is the paper's plain EDM loss.

        ``generator`` may be a list with one generator per sample: each sample's posterior sample, noise
        level, noise and image drop then come from its own generator and do not depend on the batch it
        is in (two micro-batches of gradient accumulation draw exactly what the whole batch draws).
        """
        draw = self._draw_per_sample if isinstance(generator, (list, tuple)) else self._draw_inputs
        latents, embeds, image_latents, sigma, noisy = draw(pixel_values, cache, sigma, generator, drop_image)
        pc, model_in, c_noise = unet_input(noisy, sigma, image_latents)
        time_ids = self.added_time_ids(latents.shape[0])
        context = self.context(latents, generator)
        down, mid = self._residuals(model_in, c_noise, embeds, time_ids, control, context)
        unet = unet if unet is not None else self.unet
        unet_dtype = unet.dtype
        model_out = unet(
            model_in.to(unet_dtype),
            c_noise,
            embeds.to(unet_dtype),
            time_ids,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0].float()
        weights = motion_weights(latents, motion_loss_weight) if motion_loss_weight > 0 else None
        return edm_loss(denoised(pc, noisy, model_out), latents, sigma, weights)

    def context(
        self, latents: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor | None:
        """A context branch's input for clean ``latents`` ``(B, T, C, h, w)``: each sample's first ``k`` frames
        known, ``k`` drawn uniformly from 0 to the branch's ``context_frames`` (at most ``T - 1``), from its own
        generator when ``generator`` is a list (after the sample's other draws). None for a plain branch."""
        if self.controlnet is None or not self.controlnet.is_context_branch:
            return None
        b, t = latents.shape[:2]
        high = min(int(self.controlnet.config.context_frames), t - 1) + 1
        if isinstance(generator, (list, tuple)):
            k = torch.cat([torch.randint(high, (1,), generator=g, device=g.device) for g in generator])
        else:
            device = generator.device if generator is not None else self.device
            k = torch.randint(high, (b,), generator=generator, device=device)
        return context_input(latents, k.to(latents.device))

    def _residuals(
        self,
        model_in: torch.Tensor,
        c_noise: torch.Tensor,
        embeds: torch.Tensor,
        time_ids: torch.Tensor,
        control: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> tuple[Any, Any]:
        """The branch's down and mid residuals for ``control`` (None and None without a branch)."""
        if self.controlnet is None:
            return None, None
        if control is None:
            raise ValueError("compute_loss needs the control input of the branch")
        dtype = self.controlnet.dtype
        residuals = self.controlnet(
            model_in.to(dtype),
            c_noise,
            embeds.to(dtype),
            time_ids,
            control.to(dtype),
            conditioning_scale=self.sampling.conditioning_scale,
            return_dict=False,
            controlnet_context=None if context is None else context.to(dtype),
        )
        return residuals[0], residuals[1]
