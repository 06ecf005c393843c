"""The LightningModule: frozen SVD (UNet, VAE, CLIP) plus the trainable InterDyn control branch.

Training follows the paper's recipe (EDM loss on VAE latents, first-frame conditioning with noise
augmentation, 5 % image drop for classifier-free guidance); validation computes the same loss with
fixed noise levels and fixed noise, so its value is comparable across epochs and runs; prediction
samples videos with :class:`~interdyn.models.pipeline.InterDynPipeline`.

Checkpoints hold only the branch (and the optimizer state): the frozen parts are rebuilt from the
``svd`` source on load.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from interdyn.contract import (
    has_clips,
    is_cached_batch,
    is_wan_cached_batch,
    validate_batch,
    validate_cached_batch,
)
from interdyn.errors import ConfigError
from interdyn.models.hub import SVD_REPO
from interdyn.models.pipeline import InterDynPipeline
from interdyn.models.sampling import DEFAULT_SAMPLING, SamplingSettings
from interdyn.models.svd import SVDSource
from interdyn.training.branch_training import BranchTraining
from interdyn.training.checkpoint import complete_checkpoint, keep_branch_only
from interdyn.training.objective import EDMObjective, context_branch
from interdyn.training.sampling_context import sampling_context
from interdyn.training.settings import DEFAULT_MEMORY, DEFAULT_OBJECTIVE, MemorySettings, ObjectiveSettings
from interdyn.training.setup import build_networks, check_arguments, enable_checkpointing, store_settings


class InterDynModule(EDMObjective, BranchTraining, L.LightningModule):
    """Trains the InterDyn control branch on a frozen Stable Video Diffusion (the objective:
    :class:`~interdyn.training.objective.EDMObjective`).

    Args:
        svd: the frozen SVD: a local folder or hub id with ``unet/ vae/ image_encoder/ scheduler/``, a
            preset (``"random:tiny"``, ``"random:svd"``) or a dict of architecture configs (random
            weights; see :mod:`interdyn.models.svd`).
        controlnet: start the branch from saved weights (a ``save_pretrained`` folder or the released
            InterDyn checkpoint) instead of copying the UNet encoder.
        conditioning_channels: channels of the control input (3: the mask repeated); ``interdyn fit``
            takes it from the DataModule's ``control_channels``.
        conditioning_embedding_out_channels: widths of the control encoder.
        learning_rate, adam_betas, weight_decay: the optimizer on the branch parameters.
        optimizer: ``adam`` (the paper), ``adamw`` (decoupled weight decay), ``adam_offload`` (Adam with
            its moments in host memory) or ``adamw8bit`` (bitsandbytes, when installed).
        ema_decay: keep an exponential moving average of the branch's weights (decay per optimizer step,
            warmed up as ``min(ema_decay, (1 + step) / (10 + step))``); 0 (the default, the paper's) keeps
            none. Validation, testing, prediction and the sampling callbacks then use the average, which
            checkpoints store next to the last step's weights and ``interdyn export`` writes by default.
            Single-device and DDP training only (the average is a full copy of the branch on each rank).
        objective: how the training loss draws its inputs (:class:`ObjectiveSettings`: image drop, noise
            levels, motion weighting, the validation loss's fixed noise, a context branch's known frames).
        sampling: how videos are sampled in ``predict``, the test metrics and the logged videos, and SVD's
            added time ids and the branch's scale in training too (:class:`SamplingSettings`;
            ``interdyn fit`` sets ``fps_id`` to the data's ``fps - 1``).
        memory: the memory and speed switches (:class:`MemorySettings`: frozen dtype, gradient
            checkpointing, encoder offloading, compilation, fused optimizer kernels).
        num_samples, sample_seed: videos per clip, and the seed of sampling.
    """

    def __init__(
        self,
        svd: SVDSource = SVD_REPO,
        controlnet: str | None = None,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        learning_rate: float = 1e-5,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        ema_decay: float = 0.0,
        objective: ObjectiveSettings = DEFAULT_OBJECTIVE,
        sampling: SamplingSettings = DEFAULT_SAMPLING,
        memory: MemorySettings = DEFAULT_MEMORY,
        num_samples: int = 1,
        sample_seed: int = 42,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        store_settings(self)
        check_arguments(self.hparams)
        memory = self.memory
        nets = build_networks(
            svd, controlnet, conditioning_channels, conditioning_embedding_out_channels, memory.frozen_dtype
        )
        # Registered in this order (the state dict's), frozen parts first.
        self.unet, self.vae, self.image_encoder = nets.unet, nets.vae, nets.image_encoder
        self.scheduler = nets.scheduler
        window = int(
            nets.unet.config.num_frames
        )  # a context branch is made (or checked) for the base's window
        self.controlnet = context_branch(nets.controlnet, self.objective.context_frames_max, window)
        self.init_average()
        enable_checkpointing(
            self.controlnet,
            self.unet,
            memory.gradient_checkpointing,
            memory.unet_gradient_checkpointing,
            memory.fine_checkpointing,
        )
        if memory.offload_encoders:
            # Held outside the module tree: `.to(device)` (Lightning's move to the accelerator), DDP and the
            # state dict leave them alone; `_encoders_on(device)` moves them when a step needs them.
            for name in ("vae", "image_encoder"):
                self.__dict__[name] = self._modules.pop(name)
        self._compiled = False

    def configure_model(self) -> None:
        """Compile once the module is on its device (``compile: true``); keys and hooks stay as they are."""
        options = self.memory.compile
        if options and not self._compiled:
            options = options if isinstance(options, dict) else {}
            self.controlnet.compile(**options)
            self.unet.compile(**options)
            self._compiled = True

    # ------------------------------------------------------------------ state
    def train(self, mode: bool = True) -> InterDynModule:
        """Switch the branch's mode; the frozen parts always stay in eval mode."""
        super().train(mode)
        for frozen in (self.unet, self.vae, self.image_encoder, self.branch_ema):
            if frozen is not None:
                frozen.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the branch's weights (the last step's, also while the average is in use) and their
        moving average: the frozen SVD is reloaded from ``svd`` on resume."""
        keep_branch_only(checkpoint, self.controlnet, self.average_state(checkpoint))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint's branch weights and fill in the frozen weights from the loaded SVD (and the
        average from the checkpoint's, or from its branch when it kept none)."""
        complete_checkpoint(checkpoint, self.controlnet, self.branch_ema, self.state_dict())
        self._resumed_step = int(checkpoint.get("global_step", 0))  # seeds the resumed run (on_fit_start)

    # ------------------------------------------------------------------ steps
    def _checked(self, batch: dict[str, Any], check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return validate_batch(
            batch,
            control_channels=self.controlnet.config.conditioning_channels,
            spatial_multiple=factor,
            check_values=check_values,
        )

    def _checked_cache(
        self, batch: dict[str, Any], check_values: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        control, cache = validate_cached_batch(
            batch,
            control_channels=self.controlnet.config.conditioning_channels,
            latent_channels=self.vae.config.latent_channels,
            spatial_factor=factor,
            embed_dim=self.image_encoder.config.projection_dim,
            check_values=check_values,
        )
        built_with = batch.get("cache_noise_aug")
        if built_with is not None and any(
            abs(v - self.sampling.noise_aug_strength) > 1e-9 for v in built_with
        ):
            raise ConfigError(
                f"the cached image latents were made with noise_aug_strength {sorted(set(built_with))}, but the model "
                f"uses {self.sampling.noise_aug_strength}; rebuild the cache (make latents) or change the setting"
            )
        return control, cache

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Value checks read the values back from the device, a sync that stalls every step: the first step
        # checks them (wrong data, e.g. frames in [0, 255], is wrong from the start); validation and test
        # check every batch. The compact batches of the shard DataModule are in range by construction.
        check_values = not self.__dict__.get("_train_values_checked", False)
        self._train_values_checked = True
        if is_wan_cached_batch(batch):
            raise ConfigError(
                "the training shards' cache holds the Wan VAE's latents, not SVD's: rebuild it with this config "
                "(make latents CONFIG=<this config> LATENTS_ARGS=--overwrite), or set the data's "
                "cached_conditioning: false"
            )
        if self.memory.offload_encoders:
            if not is_cached_batch(batch):
                raise ConfigError(
                    "offload_encoders trains on cached conditioning only; set the data's cached_conditioning: true "
                    "(after `make latents`) or turn offload_encoders off"
                )
            self._encoders_on("cpu")  # back to host memory after validation or sampling
        motion = self.objective.motion_loss_weight
        if is_cached_batch(batch):
            control, cache = self._checked_cache(batch, check_values)
            loss = self.compute_loss(None, control, drop_image=True, cache=cache, motion_loss_weight=motion)
        else:
            pixel_values, control = self._checked(batch, check_values)
            loss = self.compute_loss(pixel_values, control, drop_image=True, motion_loss_weight=motion)
        self.log("train/loss", loss, prog_bar=True, batch_size=control.shape[0])
        return loss

    def validation_sigmas(self, batch_size: int, batch_idx: int) -> torch.Tensor:
        """The fixed noise levels of a validation batch (``val_sigmas`` cycled over samples)."""
        levels = self.objective.val_sigmas
        return torch.tensor([levels[(batch_idx * batch_size + i) % len(levels)] for i in range(batch_size)])

    def _fixed_loss(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int
    ) -> tuple[torch.Tensor, int]:
        pixel_values, control = self._checked(batch)
        b = pixel_values.shape[0]
        generator = torch.Generator().manual_seed(
            self.objective.val_seed + 1_000_003 * dataloader_idx + batch_idx
        )
        sigma = self.validation_sigmas(b, batch_idx)
        return self.compute_loss(pixel_values, control, sigma=sigma, generator=generator), b

    # Evaluation losses are summed per rank and reduced once at the end of the epoch, on every rank:
    # a rank that received no batch (fewer shards than ranks) still takes part, so DDP cannot hang,
    # and the result is the mean over samples, not a mean of per-rank means.
    def _accumulate(self, stage: str, loss: torch.Tensor, b: int) -> None:
        sums = self.__dict__.setdefault("_eval_sums", {})
        total = sums.get(stage, torch.zeros(2, dtype=torch.float64, device=self.device))
        sums[stage] = total + torch.stack(
            [loss.detach().double() * b, torch.tensor(float(b), device=self.device, dtype=torch.float64)]
        )

    def _reduce_and_log(self, stage: str, prog_bar: bool = False) -> None:
        sums = self.__dict__.setdefault("_eval_sums", {})
        total = sums.pop(stage, torch.zeros(2, dtype=torch.float64, device=self.device))
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        if total[1] > 0:  # the same value on every rank: a callback monitoring it works on each
            self.log(f"{stage}/loss", (total[0] / total[1]).float(), prog_bar=prog_bar)

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor | None:
        if not has_clips(batch):  # only records of skipped samples
            return None
        loss, b = self._fixed_loss(batch, batch_idx, dataloader_idx)
        self._accumulate("val", loss, b)
        return loss

    def on_validation_epoch_end(self) -> None:
        self._reduce_and_log("val", prog_bar=True)

    def test_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor | None:
        if not has_clips(batch):
            return None
        loss, b = self._fixed_loss(batch, batch_idx, dataloader_idx)
        self._accumulate("test", loss, b)
        return loss

    def on_test_epoch_end(self) -> None:
        self._reduce_and_log("test")

    # ------------------------------------------------------------------ sampling
    @property
    def sampling(self) -> SamplingSettings:
        """The sampling settings (``hparams.sampling``)."""
        return SamplingSettings(**self.hparams.sampling)

    def sampling_protocol(self) -> dict[str, Any]:
        """How this module samples, as a report's protocol states it (the test callbacks' ``sampling_steps``,
        ``sampler`` and ``guidance``): SVD's steps, scheduler and frame-wise guidance range."""
        s = self.sampling
        return {
            "sampling_steps": s.num_inference_steps,
            "sampler": s.scheduler,
            "guidance": f"{s.min_guidance_scale}->{s.max_guidance_scale}",
        }

    @property
    def objective(self) -> ObjectiveSettings:
        """How the training loss draws its inputs (``hparams.objective``)."""
        return ObjectiveSettings(**self.hparams.objective)

    @property
    def memory(self) -> MemorySettings:
        """The memory and speed switches (``hparams.memory``)."""
        return MemorySettings(**self.hparams.memory)

    def pipeline(self) -> InterDynPipeline:
        """A sampling pipeline sharing this module's weights (no copies)."""
        self._encoders_on(self.device)
        pipe = InterDynPipeline(self.vae, self.image_encoder, self.unet, self.controlnet, self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample(
        self,
        pixel_values: torch.Tensor,
        control: torch.Tensor,
        seed: int | list[int] | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Generate ``num_samples`` videos per input: ``(B, N, T, 3, H, W)`` in ``[0, 1]``.

        ``seed``: one seed for the batch, or one per input (each input's videos are then those it gets
        sampled alone with its seed: clips seeded by key can be sampled in batches).
        ``pixel_values`` supplies the first frame (``(B, T, 3, H, W)`` or ``(B, 3, H, W)``); keyword
        overrides go to the pipeline (``num_inference_steps``, guidance scales, ...). Attached to a trainer,
        sampling runs in the trainer's precision (e.g. bf16 autocast), also when called from callbacks,
        which Lightning runs outside its autocast.
        """
        hp = self.hparams
        image = pixel_values[:, 0] if pixel_values.ndim == 5 else pixel_values
        n = overrides.pop("num_videos_per_prompt", hp.num_samples)
        kwargs = {**self.sampling.as_kwargs(), **overrides}
        if isinstance(seed, (list, tuple)):
            generator: Any = [torch.Generator().manual_seed(int(s)) for s in seed]
        else:
            generator = torch.Generator().manual_seed(hp.sample_seed if seed is None else seed)
        with sampling_context(self):
            frames = self.pipeline()(
                image, control, num_videos_per_prompt=n, generator=generator, output_type="pt", **kwargs
            ).frames
        return frames.float().unflatten(0, (image.shape[0], n))
