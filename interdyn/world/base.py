"""Stage 2 of the world's SVD: the spatio-temporal UNet trained as an image-to-video model, with SVD's
EDM objective and conditioning (image latent on every frame, CLIP embedding of the first frame, added
time ids) and no control: the objective of :class:`~interdyn.training.objective.EDMObjective`, which
InterDyn's branch trains with, without the branch. The VAE is stage 1's, frozen; the CLIP image encoder
is small, random and fixed.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from interdyn.errors import ConfigError
from interdyn.models.hub import load_component
from interdyn.models.sampling import DEFAULT_SAMPLING, SamplingSettings
from interdyn.models.svd import SVD_SCHEDULER_CONFIG
from interdyn.models.unet import UNetSpatioTemporalControlModel
from interdyn.training.ema import update_average
from interdyn.training.objective import EDMObjective
from interdyn.training.settings import (
    DEFAULT_OBJECTIVE,
    MemorySettings,
    ObjectiveSettings,
    as_settings,
    settings_dict,
)
from interdyn.world.folder import write_svd_folder


class BaseVideoModule(EDMObjective, L.LightningModule):
    """Trains SVD's UNet (no control branch) on clips, on a frozen VAE and a fixed CLIP image encoder.

    Args:
        vae: folder of the trained VAE (stage 1).
        unet: ``UNetSpatioTemporalConditionModel`` constructor arguments (``in_channels`` is twice the VAE's
            latent channels, ``out_channels`` its latent channels; ``cross_attention_dim`` the CLIP
            projection size).
        image_encoder: ``CLIPVisionConfig`` arguments of the random, fixed CLIP image encoder.
        seed: seed of the UNet's and CLIP's initial weights.
        learning_rate, weight_decay, warmup_steps: AdamW with a linear warm-up.
        ema_decay: decay of the exponential moving average of the UNet's weights that is written out
            (``0``: the trained weights themselves).
        objective: how the loss draws its inputs (:class:`ObjectiveSettings`: image drop, noise levels,
            the validation loss's fixed noise); the same owner as InterDyn's.
        sampling: SVD's added time ids (fps id, motion bucket) and the noise augmentation
            (:class:`SamplingSettings`; its guidance and sampler settings are not used here).
        out: the SVD img2vid folder written at the end of training (``None``: none).
        init_from: an SVD img2vid folder whose UNet and CLIP image encoder replace the random ones before
            training (fine-tuning; its UNet must have the architecture of ``unet``), ``None`` to start
            from random weights.
    """

    def __init__(
        self,
        vae: str,
        unet: dict[str, Any],
        image_encoder: dict[str, Any],
        seed: int = 0,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        objective: ObjectiveSettings = DEFAULT_OBJECTIVE,
        sampling: SamplingSettings = DEFAULT_SAMPLING,
        out: str | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for hparams in (self.hparams, self._hparams_initial):  # plain values, as checkpoints store them
            hparams["objective"] = settings_dict(as_settings(ObjectiveSettings, objective))
            hparams["sampling"] = settings_dict(as_settings(SamplingSettings, sampling))
        self.controlnet = None  # SVD alone: the objective adds no residuals
        self.vae = load_component(
            AutoencoderKLTemporalDecoder,
            vae,
            what="world VAE (stage 1: interdyn world fit --config configs/world/vae.yaml)",
            kind="svd",
        )
        latent = int(self.vae.config.latent_channels)
        unet = {"in_channels": 2 * latent, "out_channels": latent, **unet}
        if unet["in_channels"] != 2 * latent or unet["out_channels"] != latent:
            raise ConfigError(
                f"unet in_channels/out_channels must be {2 * latent}/{latent} for a VAE with {latent} latent channels"
            )
        if image_encoder.get("projection_dim") != unet.get("cross_attention_dim", 1024):
            raise ConfigError("image_encoder.projection_dim must equal unet.cross_attention_dim")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.unet = UNetSpatioTemporalControlModel(**unet)
                self.image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**image_encoder))
        except TypeError as err:
            raise ConfigError(f"invalid UNet or image encoder config: {err}") from None
        if init_from is not None:
            self._load_initial(init_from)
        for frozen in (self.vae, self.image_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        self.ema = copy.deepcopy(self.unet).requires_grad_(False) if ema_decay > 0 else None

    def _load_initial(self, folder: str) -> None:
        """Copy the UNet and CLIP image encoder of an SVD folder into the freshly built ones."""
        what = "SVD folder to fine-tune from (model.init_from)"
        for name, cls in (
            ("unet", UNetSpatioTemporalControlModel),
            ("image_encoder", CLIPVisionModelWithProjection),
        ):
            loaded = load_component(cls, folder, subfolder=name, what=what)
            mine = getattr(self, name)
            theirs = loaded.state_dict()
            if {k: tuple(v.shape) for k, v in theirs.items()} != {
                k: tuple(v.shape) for k, v in mine.state_dict().items()
            }:
                raise ConfigError(
                    f"{folder}/{name} does not have the architecture of model.{name}: "
                    "set the same constructor arguments as the run that wrote it"
                )
            mine.load_state_dict({k: v.float() for k, v in theirs.items()})

    def train(self, mode: bool = True) -> BaseVideoModule:
        """Only the UNet changes mode; the VAE, CLIP and the average stay in eval mode."""
        super().train(mode)
        for frozen in (self.vae, self.image_encoder, self.ema):
            if frozen is not None:
                frozen.eval()
        return self

    @property
    def objective(self) -> ObjectiveSettings:
        """How the loss draws its inputs (``hparams.objective``)."""
        return ObjectiveSettings(**self.hparams.objective)

    @property
    def sampling(self) -> SamplingSettings:
        """The added time ids and noise augmentation (``hparams.sampling``)."""
        return SamplingSettings(**self.hparams.sampling)

    @property
    def memory(self) -> MemorySettings:
        """The defaults: the world's encoders stay where the UNet is."""
        return MemorySettings()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch["pixel_values"], None, drop_image=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["pixel_values"].shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:  # global_step: the steps so far, this one included
            update_average(self.ema, self.unet, self.global_step, self.hparams.ema_decay)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = batch["pixel_values"]
        b = video.shape[0]
        sigmas = torch.tensor(self.objective.val_sigmas, device=self.device)
        sigma = sigmas[(torch.arange(b, device=self.device) + batch_idx * b) % len(sigmas)]
        generator = torch.Generator(self.device).manual_seed(self.objective.val_seed + batch_idx)
        loss = self.compute_loss(video, None, sigma, generator, unet=self.ema or self.unet)
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        warmup = max(1, int(hp.warmup_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        """Write the SVD img2vid folder (rank 0): the averaged UNet, the VAE, CLIP and SVD's scheduler."""
        if not self.hparams.out or self.global_rank != 0:
            return
        scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
        write_svd_folder(self.hparams.out, self.ema or self.unet, self.vae, self.image_encoder, scheduler)
        print(f"SVD img2vid folder written to {self.hparams.out}")
