"""The LightningModule of the Wan2.2 TI2V backbone: a frozen Wan transformer and VAE plus InterDyn's trainable
control branch (:class:`~interdyn.models.wan.controlnet.WanControlNetModel`).

Training minimises the backbone's own objective, flow matching with its timestep shift
(:class:`~interdyn.training.flow_objective.FlowMatchingObjective`), on VAE latents of the clips, the first
latent frame being the clean conditioning image as in TI2V. There is no text: the transformer's context is
one fixed prompt embedding (zeros, or read from a file), held as a buffer and never saved; sampling may guide
it away from a negative one (``sampling.guidance_scale`` with ``negative_prompt_embeds``). Validation and
test compute the same loss with fixed noise levels and noise; test also samples each clip with
:class:`~interdyn.models.wan.pipeline.InterDynWanPipeline` (seeded by its key) and scores the videos
against the clip, over all pixels and inside the driver masks; prediction samples videos.

Checkpoints hold only the branch (and the optimizer state): the frozen Wan is rebuilt from ``wan`` on load.
``interdyn fit`` takes this module when the config names it (``model: class_path:
interdyn.training.wan_module.InterDynWanModule``, see ``configs/wan_tiny.yaml``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from interdyn.contract import (
    has_clips,
    is_cached_batch,
    is_wan_cached_batch,
    validate_batch,
    validate_wan_cached_batch,
)
from interdyn.data.sampling import key_seed
from interdyn.errors import BatchContractError, ConfigError, WeightsMismatchError
from interdyn.models.wan.components import WAN_TI2V_REPO, WanSource
from interdyn.models.wan.controlnet import DEFAULT_LAYERS
from interdyn.models.wan.pipeline import InterDynWanPipeline
from interdyn.models.wan.ti2v import encode_video_latents
from interdyn.training.branch_training import BranchTraining
from interdyn.training.checkpoint import complete_checkpoint, keep_branch_only
from interdyn.training.flow_objective import FlowMatchingObjective
from interdyn.training.sampling_context import sampling_context
from interdyn.training.setup import check_arguments
from interdyn.training.wan_settings import (
    DEFAULT_WAN_MEMORY,
    DEFAULT_WAN_OBJECTIVE,
    DEFAULT_WAN_SAMPLING,
    WanMemorySettings,
    WanObjectiveSettings,
    WanSamplingSettings,
    store_wan_settings,
)
from interdyn.training.wan_setup import build_wan_networks, clip_rules

# The checkpoint entry naming the backbone a branch was trained on (SVD checkpoints have none).
BACKBONE_KEY = "interdyn_backbone"
WAN_BACKBONE = "wan2.2-ti2v"
_EVAL_METRICS = ("val_loss", "test_loss", "test_video_mse", "test_mask_mse")


class InterDynWanModule(BranchTraining, L.LightningModule):
    """Trains InterDyn's control branch on a frozen Wan2.2 TI2V (see the module docstring).

    Args:
        wan: the frozen Wan: a local diffusers folder or hub id laid out as ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``
            (``transformer/ vae/ scheduler/``; the text encoder is never loaded), a preset
            (``"random:wan-tiny"``) or a dict of architecture configs (random weights).
        controlnet: start the branch from a folder written by ``WanControlNetModel.save_pretrained`` instead
            of copying the transformer's blocks.
        layers: the frozen blocks that get a branch residual, and whose copies the branch holds: ``"half"``
            (default: the first half, as InterDyn's SVD branch copies the UNet's encoder half), ``"all"``,
            ``"first:N"``, ``"every:K"`` (spread over the depth) or a list of block indices.
        conditioning_channels: channels of the control input (3: the mask repeated; the data's
            ``control_channels``).
        conditioning_embedding_out_channels: widths of the mask encoder (one per x2 step, plus one).
        prompt_embeds: a safetensors file holding the fixed prompt embedding
            (:func:`~interdyn.models.wan.prompt.save_prompt_embeds`, ``interdyn prompt``); None: zeros, no text
            encoder at all.
        negative_prompt_embeds: a file of the same kind, the negative side of prompt guidance when sampling with
            ``sampling.guidance_scale`` above 1 (e.g. Wan's negative prompt encoded by ``interdyn prompt``);
            read only then (training never uses it).
        learning_rate, adam_betas, weight_decay, optimizer: the optimizer on the branch's parameters
            (``adam``, ``adamw``, ``adam_offload`` or ``adamw8bit``, as for SVD).
        ema_decay: keep an exponential moving average of the branch's weights, as the SVD module does (decay per
            optimizer step, warmed up as ``min(ema_decay, (1 + step) / (10 + step))``; 0, the default, keeps
            none). Validation, test and prediction then use the average, which checkpoints store next to the
            last step's weights and ``interdyn export`` and ``interdyn generate`` take by default. Single-device
            and DDP training only.
        objective: the flow-matching draws and the validation loss's fixed ones
            (:class:`~interdyn.training.wan_settings.WanObjectiveSettings`).
        sampling: the sampler's steps and the branch's scale (:class:`WanSamplingSettings`).
        memory: frozen dtype, gradient checkpointing, fused kernels (:class:`WanMemorySettings`).
        num_samples, sample_seed: videos per clip, and the seed of sampling.
        test_videos: ``interdyn test`` also samples every clip and logs the videos' squared error to the clip
            (``test/video_mse``) and inside the driver masks (``test/mask_mse``), frames after the first.
    """

    def __init__(
        self,
        wan: WanSource = WAN_TI2V_REPO,
        controlnet: str | None = None,
        layers: str | list[int] = DEFAULT_LAYERS,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        prompt_embeds: str | None = None,
        negative_prompt_embeds: str | None = None,
        learning_rate: float = 1e-5,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        ema_decay: float = 0.0,
        objective: WanObjectiveSettings = DEFAULT_WAN_OBJECTIVE,
        sampling: WanSamplingSettings = DEFAULT_WAN_SAMPLING,
        memory: WanMemorySettings = DEFAULT_WAN_MEMORY,
        num_samples: int = 1,
        sample_seed: int = 42,
        test_videos: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for hparams in (self.hparams, self._hparams_initial):
            store_wan_settings(hparams)
        check_arguments(self.hparams)
        # The settings groups as objects (frozen), read once from the checked hyper-parameters.
        self.objective = WanObjectiveSettings(**self.hparams.objective)
        self.sampling = WanSamplingSettings(**self.hparams.sampling)
        self.memory = memory = WanMemorySettings(**self.hparams.memory)
        if self.sampling.guidance_scale > 1 and negative_prompt_embeds is None:
            raise ConfigError(
                f"sampling.guidance_scale {self.sampling.guidance_scale:g} guides the prompt away from a negative "
                "one, which there is no text encoder to make: set model negative_prompt_embeds to a file written "
                "by `interdyn prompt`, or guidance_scale 1"
            )
        nets = build_wan_networks(
            wan, controlnet, layers, conditioning_channels, conditioning_embedding_out_channels,
            memory.frozen_dtype, prompt_embeds,
            negative_prompt_embeds if self.sampling.guidance_scale > 1 else None,
        )  # fmt: skip
        # Registered frozen parts first; the branch under the prefix checkpoints keep (BRANCH_PREFIX).
        self.transformer, self.vae, self.scheduler = nets.wan.transformer, nets.wan.vae, nets.scheduler
        self.controlnet = nets.controlnet
        self.init_average()
        self.register_buffer("prompt_embeds", nets.prompt_embeds, persistent=False)
        self.register_buffer("negative_prompt_embeds", nets.negative_prompt_embeds, persistent=False)
        self.rules = clip_rules(nets.wan)
        self.flow = FlowMatchingObjective(self.objective)
        if memory.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
        if memory.transformer_gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.eval_means = torch.nn.ModuleDict({name: MeanMetric() for name in _EVAL_METRICS})
        if memory.offload_encoders:
            # Held outside the module tree: Lightning's move to the accelerator, DDP and the state dict leave
            # it alone; `_vae_on(device)` moves it when a step needs it.
            self.__dict__["vae"] = self._modules.pop("vae")

    def _vae_on(self, device: torch.device | str) -> None:
        """With ``offload_encoders``, move the VAE to ``device`` (no-op where it is)."""
        if self.memory.offload_encoders and next(self.vae.parameters()).device != torch.device(device):
            self.vae.to(device)

    # ------------------------------------------------------------------ state
    def train(self, mode: bool = True) -> InterDynWanModule:
        """Switch the branch's mode; the frozen parts always stay in eval mode."""
        super().train(mode)
        for frozen in (self.transformer, self.vae, self.branch_ema):
            if frozen is not None:
                frozen.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the branch's weights (the last step's, also while the average is in use), its config and
        moving average, and name the backbone: the frozen Wan is reloaded from ``wan`` on resume."""
        keep_branch_only(checkpoint, self.controlnet, self.average_state(checkpoint))
        checkpoint[BACKBONE_KEY] = WAN_BACKBONE

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint holds a Wan branch that fits this one, and fill in the frozen weights (and
        the average from the checkpoint's, or from its branch when it kept none)."""
        found = checkpoint.get(BACKBONE_KEY, "svd")
        if found != WAN_BACKBONE:
            raise WeightsMismatchError(
                f"this checkpoint holds a branch trained on the {found} backbone, not on {WAN_BACKBONE}; test "
                "it with that backbone's config"
            )
        complete_checkpoint(checkpoint, self.controlnet, self.branch_ema, self.state_dict())
        self._resumed_step = int(checkpoint.get("global_step", 0))

    def setup(self, stage: str) -> None:
        """Refuse data whose clips this backbone cannot take, or whose control has other channels, in one
        sentence before any batch is read (and a moving average under sharded strategies)."""
        super().setup(stage)
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if data is None:
            return
        clip = getattr(data, "clip", None) or getattr(data, "hparams", {})
        shape = [
            clip.get(k) if isinstance(clip, dict) else getattr(clip, k, None)
            for k in ("num_frames", "height", "width")
        ]
        if all(isinstance(v, int) for v in shape):
            try:
                self.rules.check(*shape, where="the data's clip")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        channels = getattr(data, "control_channels", None)
        if channels is not None and channels != self.controlnet.config.conditioning_channels:
            raise ConfigError(
                f"the data's control has {channels} channels but the branch takes "
                f"{self.controlnet.config.conditioning_channels}; set model conditioning_channels: {channels}"
            )

    # ------------------------------------------------------------------ steps
    def _checked(self, batch: dict[str, Any], check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, control = validate_batch(
            batch,
            control_channels=self.controlnet.config.conditioning_channels,
            spatial_multiple=self.rules.spatial_multiple,
            check_values=check_values,
        )
        try:
            self.rules.check(pixels.shape[1], *pixels.shape[-2:], where="the batch's clip")
        except ValueError as err:
            raise BatchContractError(str(err)) from None
        return pixels, control

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``(B, T, 3, H, W)`` in ``[-1, 1]`` -> their normalised latents and their first frames'. The
        causal VAE encodes the first frame alone, so its latent frame is the image latent as TI2V encodes it
        (:func:`~interdyn.models.wan.ti2v.encode_image_latents`): one encoder pass serves both."""
        self._vae_on(pixels.device)
        latents = encode_video_latents(self.vae, pixels)
        return latents, latents[:, :, :1]

    def _checked_cache(
        self, batch: dict[str, Any], check_values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The control and the cached latents (float32) of a batch of ``make latents``' Wan cache, checked
        against this VAE and the clip rules; SVD's cache is one sentence."""
        if is_cached_batch(batch):
            raise ConfigError(
                "the training shards' cache holds SVD's latents and CLIP embeddings, not the Wan VAE's: rebuild "
                "it with this config (make latents CONFIG=<this config> LATENTS_ARGS=--overwrite), or set the "
                "data's cached_conditioning: false"
            )
        vae = self.vae.config
        control, latents = validate_wan_cached_batch(
            batch,
            control_channels=self.controlnet.config.conditioning_channels,
            latent_channels=vae.z_dim,
            spatial_factor=vae.scale_factor_spatial,
            temporal_factor=vae.scale_factor_temporal,
            check_values=check_values,
        )
        try:
            self.rules.check(control.shape[1], *control.shape[-2:], where="the cached clip")
        except ValueError as err:
            raise BatchContractError(str(err)) from None
        return control, latents.float()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the values are read back (a device sync) on the first step only: wrong data is wrong from the start
        check_values = not self.__dict__.get("_train_values_checked", False)
        self._train_values_checked = True
        if is_wan_cached_batch(batch) or is_cached_batch(batch):  # make latents: no video, no VAE pass
            control, latents = self._checked_cache(batch, check_values)
            image_latents = latents[:, :, :1]  # the causal VAE's first latent frame is the image's
            self._vae_on("cpu")  # back to host memory after validation or sampling (offload_encoders)
        elif self.memory.offload_encoders:
            raise ConfigError(
                "offload_encoders trains on cached latents only; set the data's cached_conditioning: true (after "
                "`make latents` with this config) or turn offload_encoders off"
            )
        else:
            pixels, control = self._checked(batch, check_values)
            latents, image_latents = self.encode(pixels)
        loss = self.flow.compute_loss(
            self.transformer, latents, image_latents, self.prompt_embeds, self.controlnet, control
        ).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=control.shape[0])
        return loss

    def fixed_loss(
        self, pixels: torch.Tensor, control: torch.Tensor, batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        """The loss with the fixed noise levels ``val_sigmas`` (cycled over samples) and seeded noise."""
        objective = self.objective
        levels, b = objective.val_sigmas, pixels.shape[0]
        sigma = torch.tensor([levels[(batch_idx * b + i) % len(levels)] for i in range(b)])
        generator = torch.Generator().manual_seed(objective.val_seed + 1_000_003 * dataloader_idx + batch_idx)
        latents, image_latents = self.encode(pixels)
        return self.flow.compute_loss(
            self.transformer, latents, image_latents, self.prompt_embeds, self.controlnet, control,
            generator=generator, sigma=sigma,
        ).loss  # fmt: skip

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if has_clips(batch):
            pixels, control = self._checked(batch)
            loss = self.fixed_loss(pixels, control, batch_idx, dataloader_idx)
            self.eval_means["val_loss"].update(loss.detach(), weight=pixels.shape[0])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not has_clips(batch):
            return
        pixels, control = self._checked(batch)
        b = pixels.shape[0]
        self.eval_means["test_loss"].update(
            self.fixed_loss(pixels, control, batch_idx, dataloader_idx), weight=b
        )
        if self.hparams.test_videos:
            videos = self.sample(
                pixels, control, seed=self._seeds(batch, batch_idx), num_videos_per_prompt=1
            )[:, 0]
            video_mse, mask_mse = video_errors(videos, pixels, control)
            self.eval_means["test_video_mse"].update(video_mse)
            self.eval_means["test_mask_mse"].update(mask_mse)

    # Every rank reduces the means at the end of the stage (torchmetrics synchronises them), also a rank that
    # received no batch, so DDP cannot hang; a stage without any clip logs nothing.
    def _log_means(self, stage: str, prog_bar: bool = False) -> None:
        for name in _EVAL_METRICS:
            if name.startswith(stage):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "compute called before update" on an empty rank
                    value = self.eval_means[name].compute()
                self.eval_means[name].reset()
                if not math.isnan(float(value)):
                    self.log(name.replace("_", "/", 1), value, prog_bar=prog_bar, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_means("val", prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_means("test")

    # ------------------------------------------------------------------ sampling
    def pipeline(self) -> InterDynWanPipeline:
        """A sampling pipeline sharing this module's weights (no copies)."""
        self._vae_on(self.device)
        pipe = InterDynWanPipeline(self.transformer, self.vae, self.scheduler, self.controlnet)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sampling_protocol(self) -> dict[str, Any]:
        """How this module samples, as a report's protocol states it (the test callbacks' ``sampling_steps``,
        ``sampler`` and ``guidance``): the steps of ``sampling``, the backbone's own scheduler by class name,
        and the prompt guidance's scale (``none`` at 1)."""
        scale = self.sampling.guidance_scale
        return {
            "sampling_steps": self.sampling.num_inference_steps,
            "sampler": type(self.scheduler).__name__,
            "guidance": f"prompt {scale:g}" if scale > 1 else "none",
        }

    @torch.no_grad()
    def sample(
        self,
        pixel_values: torch.Tensor,
        control: torch.Tensor,
        seed: int | list[int] | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Generate ``num_samples`` videos per input: ``(B, N, T, 3, H, W)`` in ``[0, 1]``.

        ``seed``: one seed for the batch, or one per input (each input's videos are then those it gets sampled
        alone with its seed). ``pixel_values`` gives the first frame (``(B, T, 3, H, W)`` or ``(B, 3, H, W)``);
        keyword overrides go to the pipeline (``num_inference_steps``, ``conditioning_scale``,
        ``guidance_scale``, whose negative side is ``negative_prompt_embeds``). Attached to a trainer, sampling
        runs in the trainer's precision (e.g. bf16 autocast).
        """
        image = pixel_values[:, 0] if pixel_values.ndim == 5 else pixel_values
        n = int(overrides.pop("num_videos_per_prompt", self.hparams.num_samples))
        if isinstance(seed, (list, tuple)):  # one stream per input, drawn by its n videos in turn
            streams = [torch.Generator().manual_seed(int(s)) for s in seed]
            generator: Any = [g for g in streams for _ in range(n)]
        else:
            generator = torch.Generator().manual_seed(self.hparams.sample_seed if seed is None else seed)
        kwargs = {**self.sampling.as_kwargs(), **overrides}
        with sampling_context(self):
            frames = self.pipeline()(
                image.repeat_interleave(n, 0), self.prompt_embeds, control=control.repeat_interleave(n, 0),
                negative_prompt_embeds=self.negative_prompt_embeds, generator=generator, output_type="pt",
                **kwargs,
            ).frames  # fmt: skip
        return frames.float().unflatten(0, (image.shape[0], n))

    def _seeds(self, batch: dict[str, Any], batch_idx: int) -> int | list[int]:
        """One seed per clip from its key (the same videos whatever the batch, rank or order), or one for a
        batch without keys."""
        keys = batch.get("key")
        if not keys:
            return self.hparams.sample_seed + batch_idx
        return [key_seed(self.hparams.sample_seed, k) for k in keys]


def video_errors(
    videos: torch.Tensor, pixels: torch.Tensor, control: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip, the squared error of sampled ``videos`` ``(B, T, 3, H, W)`` in ``[0, 1]`` to the clips'
    ``pixels`` in ``[-1, 1]``, frames after the first (the first is the given image): over all pixels, and
    over the pixels inside the driver masks (``control`` channel 0 above 0; 0 where a clip has none)."""
    error = (videos.float() - (pixels.float() + 1) / 2)[:, 1:].square().mean(dim=2)  # (B, T-1, H, W)
    masks = (control[:, 1:, 0] > 0).float()
    inside = (error * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1.0)
    return error.flatten(1).mean(1), inside
