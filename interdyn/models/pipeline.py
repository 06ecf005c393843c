"""Sampling: image + driver masks -> video (the paper's sampling), as a diffusers pipeline.

Euler sampling with SVD's scheduler (v-prediction, Karras sigmas), or DPM-Solver++(2M) on the same
EDM noise range (``scheduler="dpmpp_2m"``), classifier-free guidance with a
per-frame scale rising linearly from ``min_guidance_scale`` (first frame) to ``max_guidance_scale``
(last frame). The unconditional branch zeroes the image conditioning (CLIP embedding and image
latent) and keeps the control masks. Both branches run in one batched forward.

A driver longer than the UNet's window (its ``num_frames``) is sampled in overlapping windows, one after
another (``continuation``: ``hold``, ``chain`` or, with a context branch, ``context``:
:mod:`interdyn.models.long`), or in one pass (``single``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLTemporalDecoder, DiffusionPipeline, EulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModelWithProjection

from interdyn.contract import masks_to_control
from interdyn.models.conditioning import (
    clip_image_embeds,
    decode_latents,
    encode_image_latents,
    make_added_time_ids,
)
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.long import LatentHold, LongVideo, check_context_branch, plan_windows, sample_windows
from interdyn.models.samplers import make_scheduler
from interdyn.models.sampling import DEFAULT_SAMPLING, SamplingSettings
from interdyn.models.svd import SVDComponents
from interdyn.models.unet import UNetSpatioTemporalControlModel
from interdyn.utils.render import to_uint8

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | torch.Tensor | np.ndarray


@dataclass
class InterDynPipelineOutput(BaseOutput):
    """``frames``: list (one per video) of lists of PIL images; or an array / tensor shaped
    ``(B, T, H, W, 3)`` (np) / ``(B, T, 3, H, W)`` (pt) in ``[0, 1]``; or latents for ``"latent"``."""

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    windows: list[torch.Tensor] | None = None  # long sampling: each window's latents (N, W, 4, h, w)


def image_to_tensor(image: ImageInput) -> torch.Tensor:
    """PIL image(s), a ``(B, 3, H, W)`` / ``(3, H, W)`` tensor in ``[-1, 1]``, or an ``(H, W, 3)`` /
    ``(B, H, W, 3)`` uint8 array -> ``(B, 3, H, W)`` float tensor in ``[-1, 1]``."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, list):
        image = np.stack([np.asarray(im.convert("RGB")) for im in image])
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError("numpy images must be uint8 (H, W, 3) or (B, H, W, 3)")
        arr = image[None] if image.ndim == 3 else image
        # x / 255 * 2 - 1, in SVD's order of operations (its image processor's), so both see the same floats
        return (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0) * 2.0 - 1.0
    tensor = image[None] if image.ndim == 3 else image
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"image tensor must be (B, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    if tensor.min() < -1.0 - 1e-3 or tensor.max() > 1.0 + 1e-3:
        raise ValueError("image tensors must hold values in [-1, 1]")
    return tensor.float()


@dataclass
class _Conditioning:
    """What every denoising step feeds the branch and the UNet (stacked ``[unconditional, conditional]``
    when guided), and the per-frame guidance scale ``(1, T, 1, 1, 1)`` (None: no guidance)."""

    embeds: torch.Tensor
    image_latents: torch.Tensor
    control: torch.Tensor
    time_ids: torch.Tensor
    guidance: torch.Tensor | None
    context: torch.Tensor | None = None  # a context branch's known frames (long.py), like control


def frames_to_output(frames: torch.Tensor, output_type: str) -> Any:
    """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> the requested output type, values in ``[0, 1]``."""
    video = ((frames + 1.0) / 2.0).clamp(0.0, 1.0)
    if output_type == "pt":
        return video
    array = video.permute(0, 1, 3, 4, 2).cpu().numpy()
    if output_type == "np":
        return array
    return [[PIL.Image.fromarray(to_uint8(f)) for f in clip] for clip in array]


class InterDynPipeline(DiffusionPipeline):
    """Image-to-video with InterDyn's control branch.

    Build from a folder saved by :meth:`save_pretrained` (``from_pretrained`` works offline on a
    local folder), or from separately loaded parts with :meth:`from_components`.
    """

    model_cpu_offload_seq = "image_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        unet: UNetSpatioTemporalControlModel,
        controlnet: ControlNetSDVModel,
        scheduler: EulerDiscreteScheduler,
    ) -> None:
        super().__init__()
        if not isinstance(unet, UNetSpatioTemporalControlModel):
            raise TypeError(
                "InterDynPipeline needs the UNet as UNetSpatioTemporalControlModel (it adds the branch "
                "residuals); load it with interdyn.models.load_svd or UNetSpatioTemporalControlModel.from_pretrained"
            )
        self.register_modules(
            vae=vae, image_encoder=image_encoder, unet=unet, controlnet=controlnet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_components(cls, svd: SVDComponents, controlnet: ControlNetSDVModel) -> InterDynPipeline:
        """Assemble from loaded SVD parts and a branch (no copies are made)."""
        return cls(svd.vae, svd.image_encoder, svd.unet, controlnet, svd.scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> InterDynPipeline:
        """Load a saved pipeline; a released-style control branch inside it is converted on load
        (see :mod:`interdyn.models.released`)."""
        from interdyn.models.released import fold_released_residuals, is_released

        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token") if k in kwargs}
        if is_released(str(pretrained_model_name_or_path), "controlnet", **hub_kwargs):
            fold_released_residuals(pipe.controlnet)
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        control: torch.Tensor | np.ndarray,
        num_inference_steps: int = DEFAULT_SAMPLING.num_inference_steps,
        min_guidance_scale: float = DEFAULT_SAMPLING.min_guidance_scale,
        max_guidance_scale: float = DEFAULT_SAMPLING.max_guidance_scale,
        fps_id: float = DEFAULT_SAMPLING.fps_id,
        motion_bucket_id: float = DEFAULT_SAMPLING.motion_bucket_id,
        noise_aug_strength: float = DEFAULT_SAMPLING.noise_aug_strength,
        conditioning_scale: float = DEFAULT_SAMPLING.conditioning_scale,
        scheduler: str = DEFAULT_SAMPLING.scheduler,
        window_overlap: int = DEFAULT_SAMPLING.window_overlap,
        continuation: str = DEFAULT_SAMPLING.continuation,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        decode_chunk_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> InterDynPipelineOutput | tuple:
        """Generate videos.

        The sampling settings (``num_inference_steps`` to ``scheduler``) default to the paper's, those of
        :class:`~interdyn.models.sampling.SamplingSettings`; ``pipe(image, control, **settings.as_kwargs())``
        passes a whole set.

        Args:
            image: the first frame(s): PIL image(s), a tensor in ``[-1, 1]`` or a uint8 array.
            control: driver masks, ``(T, H, W)`` / ``(B, T, H, W)`` booleans or {0, 1}, or an already
                encoded ``(B, T, 3, H, W)`` control tensor in ``[-1, 1]``. ``T`` sets the frame count and
                ``H, W`` (multiples of 8) the resolution; the image must have the same size.
            num_inference_steps: sampler steps (each one model evaluation, batched over guidance).
            min_guidance_scale / max_guidance_scale: per-frame guidance, linear from first to last frame;
                guidance is skipped when ``max_guidance_scale <= 1``.
            fps_id, motion_bucket_id, noise_aug_strength: SVD's added time ids (InterDyn: 6, 40, 0.02).
            conditioning_scale: multiplies the branch residuals (0 gives plain SVD, without running the branch).
            scheduler: ``euler`` (SVD's), ``dpmpp_2m`` or ``edm_euler`` (see :func:`make_scheduler`).
            window_overlap, continuation: a control longer than the UNet's ``num_frames`` is sampled in windows
                (:mod:`interdyn.models.long`; ``context`` needs a context branch) or in one pass (``single``).
            num_videos_per_prompt: samples per input (outputs are grouped by input).
            generator: seeds the initial noise and the image noise augmentation; a list holds one generator
                per input, and each input's videos are then those a call with that input alone and its
                generator gives (batched sampling of clips seeded one by one).
            latents: optional initial noise ``(B * num_videos_per_prompt, T, 4, H/8, W/8)`` (unit variance).
            decode_chunk_size: frames decoded at once (default: all frames of a clip; of a window when long).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        """
        # The one mapping between diffusers-style keyword arguments and the settings object: the arguments
        # are its fields by name, with its defaults (tests/models/test_sampling.py holds them to that).
        settings = SamplingSettings(
            num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale,
            max_guidance_scale=max_guidance_scale,
            fps_id=fps_id,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            conditioning_scale=conditioning_scale,
            scheduler=scheduler,
            window_overlap=window_overlap,
            continuation=continuation,
        )
        device = self._execution_device
        pixels, control = self._check_inputs(image, control, device)
        if isinstance(generator, list) and len(generator) != control.shape[0]:
            raise ValueError(
                f"a list of generators needs one per input ({control.shape[0]}), got {len(generator)}"
            )
        n, chunk = num_videos_per_prompt, decode_chunk_size or control.shape[1]
        latents, long = self._sample(
            settings, device, pixels, control, n, generator, latents, decode_chunk_size
        )
        frames_out: Any = latents
        if output_type != "latent":
            video = long.video_frames() if long else decode_latents(self.vae, latents, chunk)
            frames_out = frames_to_output(video, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames_out,)
        return InterDynPipelineOutput(frames=frames_out, windows=long.latents if long else None)

    def _sample(
        self,
        settings: SamplingSettings,
        device: torch.device,
        pixels: torch.Tensor,
        control: torch.Tensor,
        n: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        decode_chunk_size: int | None,
    ) -> tuple[torch.Tensor, LongVideo | None]:
        """The video's latents: one pass, or windows one after another (then also their :class:`LongVideo`)."""
        window = int(self.unet.config.num_frames or control.shape[1])
        if control.shape[1] <= window or settings.continuation == "single":
            return self._denoise(settings, device, pixels, control, n, generator, latents), None
        plan = plan_windows(control.shape[1], window, settings.window_overlap)
        if settings.continuation == "context":
            check_context_branch(self.controlnet.config, window)
        denoise = partial(self._denoise, settings, device)
        decode = partial(decode_latents, self.vae, chunk_size=decode_chunk_size or window)
        given = int(self.controlnet.config.get("context_frames", 0))
        long = sample_windows(
            denoise, decode, pixels, control, plan, settings.continuation, n, generator, latents, given
        )
        return long.video_latents(), long

    def _denoise(
        self,
        settings: SamplingSettings,
        device: torch.device,
        pixels: torch.Tensor,
        control: torch.Tensor,
        n: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        hold: LatentHold | None = None,
    ) -> torch.Tensor:
        """The latents ``(B * n, T, 4, h, w)`` of one pass over ``control``'s frames (``hold``: see long.py)."""
        conditioning = self._conditioning(pixels, control, n, settings, generator, device)
        if hold is not None and (context := hold.context(control.shape[1])) is not None:
            context = context.to(device, conditioning.control.dtype)
            conditioning.context = context if conditioning.guidance is None else torch.cat([context, context])
        sampler = make_scheduler(settings.scheduler, self.scheduler)
        sampler.set_timesteps(settings.num_inference_steps, device=device)
        videos = (control.shape[0] * n, *control.shape[1:])
        latents = self._initial_latents(videos, sampler, generator, latents, device)
        if hold is not None:
            latents = hold.start(latents, sampler)
        for t in self.progress_bar(sampler.timesteps):
            pred = self._prediction(sampler, latents, t, conditioning, settings.conditioning_scale)
            latents = sampler.step(pred, t, latents).prev_sample
            if hold is not None:
                latents = hold.step(latents, sampler)
        return latents

    def _check_inputs(
        self, image: ImageInput, control: torch.Tensor | np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first frames ``(B, 3, H, W)`` and control ``(B, T, C, H, W)`` on ``device``, a batch of one
        broadcast to the other's batch; raises ``ValueError`` for sizes that do not match or do not fit the VAE."""
        pixels = image_to_tensor(image).to(device)
        cond = masks_to_control(torch.as_tensor(control)).to(device)
        if pixels.shape[0] == 1 and cond.shape[0] > 1:
            pixels = pixels.expand(cond.shape[0], -1, -1, -1)
        if cond.shape[0] == 1 and pixels.shape[0] > 1:
            cond = cond.expand(pixels.shape[0], -1, -1, -1, -1)
        batch, _, _, height, width = cond.shape
        if pixels.shape[0] != batch or pixels.shape[-2:] != (height, width):
            raise ValueError(
                f"image batch/size {tuple(pixels.shape)} does not match control {tuple(cond.shape)}; "
                "resize/crop both to the same size first"
            )
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}"
            )
        return pixels, cond

    def _conditioning(
        self,
        pixels: torch.Tensor,
        control: torch.Tensor,
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
    ) -> _Conditioning:
        """Conditioning for the B inputs, repeated for the ``n`` samples of each, and with guidance stacked
        ``[unconditional, conditional]`` (the masks are kept for both) for one batched forward. With one
        generator per input, each image is noised and encoded on its own (as a call with it alone)."""
        dtype = self.unet.dtype
        frames = control.shape[1]
        embeds = clip_image_embeds(self.image_encoder, pixels).to(dtype)
        strength = settings.noise_aug_strength
        if isinstance(generator, list):
            image_latents = torch.cat(
                [
                    encode_image_latents(self.vae, pixels[i : i + 1], strength, g)
                    for i, g in enumerate(generator)
                ]
            ).to(dtype)
        else:
            image_latents = encode_image_latents(self.vae, pixels, strength, generator).to(dtype)
        embeds = embeds.repeat_interleave(n, dim=0)
        image_latents = image_latents.repeat_interleave(n, dim=0).unsqueeze(1).expand(-1, frames, -1, -1, -1)
        control = control.repeat_interleave(n, dim=0).to(dtype)
        time_ids = make_added_time_ids(
            settings.fps_id,
            settings.motion_bucket_id,
            settings.noise_aug_strength,
            control.shape[0],
            device,
            dtype,
        )
        if settings.max_guidance_scale <= 1.0:
            return _Conditioning(embeds, image_latents, control, time_ids, None)
        scale = torch.linspace(
            settings.min_guidance_scale, settings.max_guidance_scale, frames, device=device
        )
        return _Conditioning(
            torch.cat([torch.zeros_like(embeds), embeds]),
            torch.cat([torch.zeros_like(image_latents), image_latents]),
            torch.cat([control, control]),
            torch.cat([time_ids, time_ids]),
            scale.view(1, frames, 1, 1, 1).to(dtype),
        )

    def _initial_latents(
        self,
        control_shape: tuple[int, ...],
        sampler: Any,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """The starting noise for a control of ``control_shape`` ``(B * n, T, C, H, W)`` (drawn, or ``latents`` checked),
        scaled to the sampler's first noise level."""
        samples, frames, _, height, width = control_shape
        shape = (
            samples,
            frames,
            self.unet.config.out_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None and isinstance(generator, list):
            # each input's n videos from its own generator, drawn as a call with that input alone draws them
            per_input = (samples // len(generator), *shape[1:])
            latents = torch.cat(
                [randn_tensor(per_input, generator=g, device=device, dtype=torch.float32) for g in generator]
            )
        elif latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device, torch.float32) * sampler.init_noise_sigma

    def _prediction(
        self,
        sampler: Any,
        latents: torch.Tensor,
        t: torch.Tensor,
        conditioning: _Conditioning,
        conditioning_scale: float,
    ) -> torch.Tensor:
        """One model evaluation (branch, then UNet) at step ``t``, guided when ``conditioning`` is."""
        guided = conditioning.guidance is not None
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = sampler.scale_model_input(model_in, t).to(self.unet.dtype)
        model_in = torch.cat([model_in, conditioning.image_latents], dim=2)
        residuals: tuple[Any, Any] = (None, None)
        if conditioning_scale != 0:  # at 0 the residuals are zeros: skip the branch's cost
            branch_dtype = self.controlnet.dtype  # the branch may be fp32 next to bf16 frozen parts
            residuals = self.controlnet(
                model_in.to(branch_dtype),
                t,
                conditioning.embeds.to(branch_dtype),
                conditioning.time_ids.to(branch_dtype),
                conditioning.control.to(branch_dtype),
                conditioning_scale=conditioning_scale,
                return_dict=False,
                controlnet_context=None
                if conditioning.context is None
                else conditioning.context.to(branch_dtype),
            )
        pred = self.unet(
            model_in,
            t,
            conditioning.embeds,
            conditioning.time_ids,
            down_block_additional_residuals=residuals[0],
            mid_block_additional_residual=residuals[1],
            return_dict=False,
        )[0].float()
        if guided:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + conditioning.guidance.float() * (cond_pred - uncond)
        return pred
