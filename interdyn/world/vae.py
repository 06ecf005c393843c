"""Stage 1 of the world's SVD: a temporal VAE (SVD's ``AutoencoderKLTemporalDecoder``) trained on clips."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from diffusers import AutoencoderKLTemporalDecoder

from interdyn.contract import to_contract
from interdyn.errors import ConfigError
from interdyn.utils.files import write_folder_atomic


def foreground_weights(video: torch.Tensor, foreground_weight: float, threshold: float = 0.1) -> torch.Tensor:
    """Per-pixel loss weights ``(B, T, 1, H, W)`` for clips ``(B, T, 3, H, W)`` in ``[-1, 1]``: 1 on the
    background, ``1 + foreground_weight`` where a pixel's colour is more than ``threshold`` (summed over
    channels) from its frame's per-channel median; normalised to mean 1 per frame."""
    if foreground_weight <= 0:
        return torch.ones_like(video[:, :, :1])
    median = video.flatten(3).median(dim=3).values[..., None, None]
    foreground = ((video - median).abs().sum(dim=2, keepdim=True) > threshold).float()
    weight = 1.0 + foreground_weight * foreground
    return weight / weight.mean(dim=(3, 4), keepdim=True)


class VAEModule(L.LightningModule):
    """Trains an ``AutoencoderKLTemporalDecoder`` to reconstruct whole clips (the decoder's temporal layers
    see the clip's frames together, as they do when SVD decodes a video).

    The loss is ``MSE + l1_weight * L1 + kl_weight * KL`` per pixel, where the reconstruction terms weigh
    foreground pixels (those away from the frame's median colour: the objects, the driver)
    ``1 + foreground_weight`` times a background pixel, so that small objects are learnt early rather than
    after the background. When training ends the VAE is written
    to ``out`` as a diffusers folder, with ``scaling_factor`` set so that scaled latents of training clips
    have unit standard deviation (what SVD's EDM objective, with sigma_data = 1, expects).

    Args:
        vae: ``AutoencoderKLTemporalDecoder`` constructor arguments.
        learning_rate: AdamW's learning rate (cosine decay to 10 % over ``trainer.max_steps``).
        kl_weight, l1_weight, foreground_weight: loss weights.
        train_frames: frames of a random window of each clip seen per training step (the decoder's temporal
            layers are local, so short windows of many clips teach them as well as whole clips, for less
            compute); ``None``: whole clips. Validation always decodes whole clips.
        init_logvar: initial log-variance of the posterior (the bias of ``quant_conv``'s variance half): a
            random encoder's unit variance would bury the latents in sampling noise at the start.
        seed: seed of the initial weights.
        out: folder written at the end of training (``None``: none).
    """

    def __init__(
        self,
        vae: dict[str, Any],
        learning_rate: float = 1e-3,
        kl_weight: float = 1e-6,
        l1_weight: float = 1.0,
        foreground_weight: float = 0.0,
        train_frames: int | None = 4,
        init_logvar: float = -8.0,
        seed: int = 0,
        out: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vae = AutoencoderKLTemporalDecoder(**vae)
        except TypeError as err:
            raise ConfigError(f"invalid VAE config: {err}") from None
        latent = int(self.vae.config.latent_channels)
        with torch.no_grad():
            self.vae.quant_conv.bias[latent:] += init_logvar
        self._latent_std: list[torch.Tensor] = []

    def reconstruct(self, video: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(B, T, 3, H, W)`` in ``[-1, 1]`` -> reconstruction of the same shape, the latents and the posterior."""
        b, t = video.shape[:2]
        posterior = self.vae.encode(video.flatten(0, 1)).latent_dist
        z = posterior.sample() if sample else posterior.mode()
        recon = self.vae.decode(z, num_frames=t).sample
        return recon.unflatten(0, (b, t)), z, posterior

    def _loss(self, video: torch.Tensor, sample: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        recon, z, posterior = self.reconstruct(video, sample)
        weight = foreground_weights(video, self.hparams.foreground_weight)
        mse = torch.mean(weight * (recon - video) ** 2)
        l1 = torch.mean(weight * (recon - video).abs())
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + self.hparams.l1_weight * l1 + self.hparams.kl_weight * kl
        return loss, {"mse": mse, "l1": l1, "kl": kl, "latent_std": posterior.mode().std()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        video = batch["pixel_values"]
        b, t = video.shape[:2]
        window = self.hparams.train_frames
        if window and window < t:
            starts = torch.randint(0, t - window + 1, (b,)).tolist()
            video = torch.stack([clip[s : s + window] for clip, s in zip(video, starts, strict=True)])
        loss, parts = self._loss(video, sample=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, parts = self._loss(batch["pixel_values"], sample=False)
        b = batch["pixel_values"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log("val/mse", parts["mse"], batch_size=b, sync_dist=True)
        psnr = 10 * torch.log10(4.0 / parts["mse"].clamp_min(1e-10))  # peak-to-peak 2 in [-1, 1]
        self.log("val/psnr", psnr, prog_bar=True, batch_size=b, sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.vae.parameters(), lr=self.hparams.learning_rate, weight_decay=0.0)
        total = max(1, int(self.trainer.max_steps or 1))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(min(step, total) / total * torch.pi)).item())
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def latent_scale(self, video: torch.Tensor) -> float:
        """``1 / std`` of the posterior means of ``video``'s frames: the VAE's ``scaling_factor``."""
        return float(1.0 / self.vae.encode(video.flatten(0, 1)).latent_dist.mode().std().clamp_min(1e-6))

    def on_train_end(self) -> None:
        """Write the trained VAE (rank 0), its scaling factor measured on up to 32 training clips."""
        if not self.hparams.out or self.global_rank != 0:
            return
        videos = []
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            for batch in datamodule.train_dataloader():
                videos.append(to_contract(batch)["pixel_values"])
                if sum(len(v) for v in videos) >= 32:
                    break
        self.write(self.hparams.out, torch.cat(videos).to(self.device) if videos else None)

    def write(self, out: str, videos: torch.Tensor | None = None) -> None:
        """Save the VAE as a diffusers folder at ``out`` (atomically); with ``videos`` ``(B, T, 3, H, W)`` in
        ``[-1, 1]`` its ``scaling_factor`` is first set to :meth:`latent_scale` of them."""
        was_training = self.vae.training
        self.vae.eval()
        if videos is not None:
            self.vae.register_to_config(scaling_factor=self.latent_scale(videos))
        self.vae.train(was_training)
        write_folder_atomic(out, lambda tmp: self.vae.save_pretrained(tmp, safe_serialization=True))
        print(f"VAE written to {out} (scaling_factor {self.vae.config.scaling_factor:.4f})")
