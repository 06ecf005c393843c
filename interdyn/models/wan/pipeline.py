"""Sampling on Wan2.2 TI2V: image (+ driver masks) -> video, as a diffusers pipeline.

The sampler is the backbone's own (UniPC on flow sigmas with shift 5 for TI2V-5B, or whatever scheduler
the folder ships); the first frame conditions the video as TI2V does (:mod:`interdyn.models.wan.ti2v`).
There is no text encoder: the prompt is a fixed embedding computed once (:mod:`interdyn.models.wan.prompt`).
Classifier-free guidance on the prompt is optional (``guidance_scale > 1`` with ``negative_prompt_embeds``);
the unconditional call keeps the control masks. With no branch, or ``conditioning_scale=0``, the output
is diffusers' ``WanImageToVideoPipeline``'s (``expand_timesteps=True``) for the same weights, noise and
prompt embeddings (tests/models/wan/test_pipeline_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from interdyn.contract import masks_to_control
from interdyn.models.pipeline import ImageInput, frames_to_output, image_to_tensor
from interdyn.models.wan.components import WanComponents, WanScheduler
from interdyn.models.wan.controlnet import WanControlNetModel, check_clip_frames
from interdyn.models.wan.ti2v import (
    decode_latents,
    encode_image_latents,
    predict_flow,
    token_timesteps,
    with_first_frame,
)
from interdyn.models.wan.transformer import WanTransformer3DControlModel

DEFAULT_NUM_FRAMES = 49


@dataclass
class WanPipelineOutput(BaseOutput):
    """``frames``: ``(B, T, 3, H, W)`` (pt) / ``(B, T, H, W, 3)`` (np) in ``[0, 1]``, lists of PIL images
    (pil), or the normalised latents ``(B, C, F, h, w)`` (latent)."""

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


class InterDynWanPipeline(DiffusionPipeline):
    """Image-to-video on a frozen Wan2.2 TI2V model, with InterDyn's control branch when one is given."""

    model_cpu_offload_seq = "controlnet->transformer->vae"
    _optional_components = ["controlnet"]

    def __init__(
        self,
        transformer: WanTransformer3DControlModel,
        vae: AutoencoderKLWan,
        scheduler: WanScheduler,
        controlnet: WanControlNetModel | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(transformer, WanTransformer3DControlModel):
            raise TypeError(
                "InterDynWanPipeline needs the transformer as WanTransformer3DControlModel (it adds the branch "
                "residuals); load it with interdyn.models.wan.load_wan"
            )
        if controlnet is not None:
            branch, ours = controlnet.config, vae.config
            if (branch.vae_scale_factor_spatial, branch.vae_scale_factor_temporal) != (
                ours.scale_factor_spatial,
                ours.scale_factor_temporal,
            ):
                raise ValueError(
                    f"the branch's mask encoder compresses frames x{branch.vae_scale_factor_temporal} and pixels "
                    f"x{branch.vae_scale_factor_spatial}, this VAE x{ours.scale_factor_temporal} and "
                    f"x{ours.scale_factor_spatial}: build the branch for this backbone"
                )
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler, controlnet=controlnet)

    @classmethod
    def from_components(
        cls, wan: WanComponents, controlnet: WanControlNetModel | None = None
    ) -> InterDynWanPipeline:
        """Assemble from loaded Wan parts and an optional branch (no copies are made)."""
        return cls(wan.transformer, wan.vae, wan.scheduler, controlnet)

    @property
    def spatial_factor(self) -> int:
        """Pixels per token along each axis: the VAE's compression times the transformer's patch."""
        return self.vae.config.scale_factor_spatial * self.transformer.config.patch_size[1]

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt_embeds: torch.Tensor,
        control: torch.Tensor | np.ndarray | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        negative_prompt_embeds: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        known_latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ) -> WanPipelineOutput | tuple:
        """Generate videos.

        Args:
            image: the first frame(s): ``(B, 3, H, W)`` tensor in ``[-1, 1]``, PIL image(s) or uint8 array;
                ``H`` and ``W`` multiples of :attr:`spatial_factor` (32 for TI2V-5B).
            prompt_embeds: the fixed prompt embedding ``(1 or B, S, text_dim)``.
            control: driver masks ``(T, H, W)`` / ``(B, T, H, W)`` or an encoded ``(B, T, 3, H, W)`` tensor in
                ``[-1, 1]``; ``T`` (``1 + 4k``) sets the frame count. None: no control (plain TI2V).
            num_frames: frame count without control (default 49); must equal ``T`` with control.
            num_inference_steps: sampler steps.
            guidance_scale: prompt guidance (needs ``negative_prompt_embeds`` when above 1).
            conditioning_scale: multiplies the branch residuals (0: the frozen model alone, branch not run).
            generator: seeds the initial noise; latents: or the noise itself ``(B, C, F, h, w)``.
            known_latents: the normalised latents ``(B, C, k, h, w)`` of the first ``1 + 4(k - 1)`` frames, known
                already (a long video's window, :mod:`interdyn.models.wan.long`): held clean, with timestep 0,
                as TI2V holds the image's latent frame (which they replace: their first frame should be
                ``image``). None: the image's alone.
            output_type: ``"pt"``, ``"np"``, ``"pil"`` or ``"latent"``.
        """
        device = self._execution_device
        pixels, control = self._check_inputs(image, control, device)
        frames = num_frames or (control.shape[1] if control is not None else DEFAULT_NUM_FRAMES)
        if control is not None and frames != control.shape[1]:
            raise ValueError(f"num_frames is {frames} but the control masks have {control.shape[1]} frames")
        embeds, negative = self._prompts(
            prompt_embeds, negative_prompt_embeds, guidance_scale, pixels.shape[0]
        )
        image_latents = self._known(pixels, known_latents, check_clip_frames(frames))
        latents = self._initial_latents(image_latents, check_clip_frames(frames), generator, latents)
        control_tokens = None
        if self.controlnet is not None and control is not None and conditioning_scale != 0:
            control_tokens = self.controlnet.embed_control(control)  # the same every step

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        patch = tuple(self.transformer.config.patch_size)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = with_first_frame(latents, image_latents)
            timestep = token_timesteps(t, model_in, patch, known=image_latents.shape[2])
            kw: dict[str, Any] = dict(control_tokens=control_tokens, conditioning_scale=conditioning_scale)
            pred = predict_flow(self.transformer, model_in, timestep, embeds, self.controlnet, **kw)
            if negative is not None:
                uncond = predict_flow(self.transformer, model_in, timestep, negative, self.controlnet, **kw)
                pred = uncond + guidance_scale * (pred - uncond)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        latents = with_first_frame(latents, image_latents)

        if output_type == "latent":
            out: Any = latents
        else:
            out = frames_to_output(decode_latents(self.vae, latents).float(), output_type)
        self.maybe_free_model_hooks()
        return WanPipelineOutput(frames=out) if return_dict else (out,)

    def _check_inputs(
        self, image: ImageInput, control: torch.Tensor | np.ndarray | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """First frames ``(B, 3, H, W)`` and control ``(B, T, 3, H, W)`` (or None) on ``device``; raises
        ``ValueError`` for sizes that do not match each other or the token grid."""
        pixels = image_to_tensor(image).to(device)
        height, width = pixels.shape[-2:]
        factor = self.spatial_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        if control is None:
            return pixels, None
        cond = masks_to_control(torch.as_tensor(control)).to(device)
        if cond.shape[0] == 1 and pixels.shape[0] > 1:
            cond = cond.expand(pixels.shape[0], -1, -1, -1, -1)
        if pixels.shape[0] == 1 and cond.shape[0] > 1:
            pixels = pixels.expand(cond.shape[0], -1, -1, -1)
        if cond.shape[0] != pixels.shape[0] or cond.shape[-2:] != pixels.shape[-2:]:
            raise ValueError(
                f"image batch/size {tuple(pixels.shape)} does not match control {tuple(cond.shape)}; "
                "resize/crop both to the same size first"
            )
        return pixels, cond

    def _known(self, pixels: torch.Tensor, known: torch.Tensor | None, latent_frames: int) -> torch.Tensor:
        """The clean latent frames the video starts from: the image's, or ``known`` (checked: one per clip,
        the clip's latent size, fewer frames than the clip has)."""
        if known is None:
            return encode_image_latents(self.vae, pixels)
        batch, height, width = pixels.shape[0], *pixels.shape[-2:]
        factor = self.vae.config.scale_factor_spatial
        expected = (batch, self.vae.config.z_dim, height // factor, width // factor)
        found = (known.shape[0], known.shape[1], *known.shape[-2:])
        if known.ndim != 5 or found != expected or not 1 <= known.shape[2] < latent_frames:
            raise ValueError(
                f"known_latents must be (B, C, k, h, w) = {expected[:2]} + (k,) + {expected[2:]} with k from 1 "
                f"to {latent_frames - 1}, got {tuple(known.shape)}"
            )
        return known.to(pixels.device, torch.float32)

    def _prompts(
        self, embeds: torch.Tensor, negative: torch.Tensor | None, guidance_scale: float, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt embeddings (and the negative ones when guided) for ``batch`` videos."""
        if embeds.ndim != 3 or embeds.shape[0] not in (1, batch):
            raise ValueError(f"prompt_embeds must be (1 or {batch}, S, D), got {tuple(embeds.shape)}")
        if guidance_scale <= 1.0:
            negative = None
        elif negative is None:
            raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (there is no text encoder)")
        device = self._execution_device

        def fit(e: torch.Tensor) -> torch.Tensor:
            return e.to(device, self.transformer.dtype).expand(batch, -1, -1)

        return fit(embeds), None if negative is None else fit(negative)

    def _initial_latents(
        self,
        image_latents: torch.Tensor,
        latent_frames: int,
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Unit Gaussian noise ``(B, C, F, h, w)`` (drawn, or ``latents`` checked), float32."""
        batch, channels, _, height, width = image_latents.shape
        shape = (batch, channels, latent_frames, height, width)
        if latents is None:
            return randn_tensor(shape, generator=generator, device=image_latents.device, dtype=torch.float32)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(image_latents.device, torch.float32)
