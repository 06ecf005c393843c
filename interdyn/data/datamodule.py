"""``ShardDataModule``: the LightningDataModule over WebDataset shards.

Loader workers produce compact batches (uint8 frames, bool masks); ``on_after_batch_transfer`` expands
them to the batch contract's floats once they are on the device.

Training streams clips from resampled, shuffled shards, split by rank (each rank and worker draws
its own seeded stream) with a configurable epoch length; validation, test and predict split the samples
across ranks (balanced to a clip) and the shards across a rank's workers, so every sample is seen
exactly once across all ranks; their batches list skipped samples in ``batch["skipped"]`` (a batch may
hold only those).
"""

from __future__ import annotations

import math
from dataclasses import replace

import lightning as L
import torch
from torch.utils.data import DataLoader

from interdyn.contract import to_contract
from interdyn.data.cache import CachedClipDecoder, check_cache_settings, read_cache_settings
from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec, Crop
from interdyn.data.perturb import MaskPerturbation
from interdyn.data.shards import CONTROL_CHANNELS, ClipDecoder, ShardClipStream, collate_clips, expand_urls
from interdyn.errors import ConfigError


class ShardDataModule(L.LightningDataModule):
    """Clips described by one :class:`~interdyn.data.clip_spec.ClipSpec` from shards written by ``data_prep``.

    Args:
        train_shards, val_shards, test_shards, predict_shards: shard specs: local globs
            (``data/shards/ssv2/train/*.tar``), brace patterns (``...-{000000..000099}.tar``), ``pipe:``
            commands (``pipe:aws s3 cp s3://bucket/ssv2-train-{000000..000999}.tar -``), or lists.
            ``predict_shards`` defaults to ``test_shards``.
        clip: the clips, by default the paper's (:data:`~interdyn.data.clip_spec.PAPER_CLIP`: 14 frames at
            "7 FPS", SVD's fps=7 convention, cut as the authors' loader cuts them, 256x384, mask-aware crop);
            a config names only what differs (``clip: {height: 64, width: 64}``). ``num_frames``, ``fps``,
            ``frame_stride``, ``frame_sampling``: the frames (see :mod:`interdyn.data.sampling`); ``height``,
            ``width``: output size (multiples of 64 for SVD); ``crop``: the training crop (``mask_aware``,
            ``center`` or ``random``); ``window``: the fixed window of evaluation clips (``center`` or
            ``start``; training draws its windows at random). The model's ``fps_id`` follows ``fps``.
        eval_crop: the crop of evaluation clips (default: the clip's, or ``center`` when it is random).
        hflip: random horizontal flips in training (off: flips change text-labelled physics).
        require_driver_in_first_frame, min_driver_pixels: skip windows whose first frame does not show
            the driver.
        require_driver_in_clip: skip windows in which no frame shows the driver (for drivers that
            enter later, e.g. CLEVRER; set ``require_driver_in_first_frame: false`` with it).
        batch_size, eval_batch_size: per-rank batch sizes.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        shuffle_buffer: training sample shuffle buffer (per worker).
        epoch_samples: training clips per epoch over all ranks (rounded up to whole batches per worker).
        seed: base seed of the training streams and random crops.
        control_type: the control signal: ``binary`` driver masks (the paper), ``boxes``, ``semantic``
            (driver + other entities in the first frame) or ``oracle`` (driver + other entities in every
            frame); set the model's ``conditioning_channels`` to :attr:`control_channels` (3, 3, 2, 2).
        with_objects: batches also carry ``objects`` (per-clip (K, T, H, W) masks) and ``object_names``.
        eval_perturbation: perturb the driver masks of validation/test/predict clips, e.g.
            ``{kind: dilate, severity: 4, seed: 0}`` (kinds: dilate, erode, drop, jitter, boxify).
        cached_conditioning: train on the ``cond.npz`` fields written by ``make latents`` (VAE latents,
            first-frame latent and CLIP embedding of one fixed window and crop per video): no video
            decoding and no encoders in the step. Evaluation still decodes the videos.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        predict_shards: str | list[str] | None = None,
        clip: ClipSpec = PAPER_CLIP,
        eval_crop: Crop | None = None,
        hflip: bool = False,
        require_driver_in_first_frame: bool = True,
        require_driver_in_clip: bool = False,
        min_driver_pixels: int = 1,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        shuffle_buffer: int = 256,
        epoch_samples: int = 10_000,
        seed: int = 0,
        control_type: str = "binary",
        with_objects: bool = False,
        eval_perturbation: dict | None = None,
        cached_conditioning: bool = False,
    ) -> None:
        super().__init__()
        try:  # validate the settings early, with the config's names
            self.clip = ClipSpec.from_mapping(clip)
            ClipDecoder(self.clip, control_type=control_type)
            self._perturbation = MaskPerturbation(**eval_perturbation) if eval_perturbation else None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data settings: {err}") from None
        # the clip as plain values: checkpoints are read weights-only and logged hyper-parameters stay YAML
        self.save_hyperparameters(ignore=["clip"])
        self.save_hyperparameters({"clip": self.clip.as_kwargs()})
        if cached_conditioning and control_type != "binary":
            raise ConfigError(
                "cached_conditioning stores binary driver masks; use control_type: binary with it"
            )

    @property
    def control_channels(self) -> int:
        """Channels of the control this DataModule produces (the model's ``conditioning_channels``)."""
        return CONTROL_CHANNELS[self.hparams.control_type]

    # ------------------------------------------------------------------ helpers
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _cached_decoder(self, shards: str | list[str]) -> CachedClipDecoder:
        """The cache decoder, after checking the first local shard's cache against these settings."""
        local = [u for u in expand_urls(shards) if not u.startswith("pipe:") and "://" not in u]
        if local:
            try:
                settings = read_cache_settings(local[0])
            except OSError as err:
                raise ConfigError(f"cannot read {local[0]}: {err}") from None
            if settings is None:
                raise ConfigError(
                    f"cached_conditioning is on but {local[0]} holds no cond.npz fields; run `make latents` "
                    "(python -m data_prep.latents) on the training shards first"
                )
            try:
                check_cache_settings(settings, self.clip, local[0])
            except ValueError as err:
                raise ConfigError(str(err)) from None
        return CachedClipDecoder(self.clip)

    def _decoder(self, train: bool) -> ClipDecoder:
        hp = self.hparams
        crop = self.clip.crop
        eval_crop = hp.eval_crop or ("center" if crop == "random" else crop)
        return ClipDecoder(
            replace(self.clip, crop=crop if train else eval_crop),
            random_window=train,
            hflip=hp.hflip and train,
            require_driver_in_first_frame=hp.require_driver_in_first_frame,
            require_driver_in_clip=hp.require_driver_in_clip,
            min_driver_pixels=hp.min_driver_pixels,
            control_type=hp.control_type,
            with_objects=hp.with_objects,
            perturbation=None if train else self._perturbation,
        )

    def samples_per_worker(self, world_size: int) -> int:
        """Training clips per worker per epoch: ``epoch_samples`` split over ranks and workers, rounded up
        to whole batches so that every rank runs the same number of steps."""
        hp = self.hparams
        workers = max(1, hp.num_workers)
        return math.ceil(hp.epoch_samples / (world_size * workers * hp.batch_size)) * hp.batch_size

    def _loader(self, shards: str | list[str] | None, train: bool, what: str) -> DataLoader:
        if not shards:
            raise ValueError(f"no {what} shards configured (set data.init_args.{what}_shards)")
        hp = self.hparams
        rank, world = self._rank_world()
        decoder = self._cached_decoder(shards) if train and hp.cached_conditioning else self._decoder(train)
        stream = ShardClipStream(
            shards,
            decoder,
            train=train,
            rank=rank,
            world_size=world,
            samples_per_worker=self.samples_per_worker(world) if train else None,
            shuffle_buffer=hp.shuffle_buffer,
            seed=hp.seed,
            report_skips=not train,  # evaluations count what they could not score
        )
        return DataLoader(
            stream,
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            collate_fn=collate_clips,
        )

    # ------------------------------------------------------------------ LightningDataModule
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_shards, True, "train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_shards, False, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_shards, False, "test")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Expand the compact uint8 / bool batch to the contract's floats on the device (see
        :func:`interdyn.contract.to_contract`)."""
        return to_contract(batch)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_shards or self.hparams.test_shards, False, "predict")
