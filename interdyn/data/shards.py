"""Streaming clips from WebDataset shards (the format of :mod:`interdyn.data.shard_format` -> the batch contract).

:class:`ClipDecoder` turns one shard sample (``video.mp4``/``video.webm``, ``masks.npz``, ``json``) into
a clip; :class:`ShardClipStream` is the IterableDataset that reads shards:

- training: shards drawn with replacement (an endless stream, seeded per rank, worker and epoch),
  a sample shuffle buffer, and a fixed number of samples per worker and epoch;
- evaluation: split by *sample* across ranks (every rank reads every shard and decodes its share, so
  the ranks finish within a clip of each other and a rank never goes without samples because there are
  fewer shards than ranks), by shard across the loader workers of a rank: every sample is seen exactly
  once across all ranks, with no padding duplicates. With ``report_skips`` the skipped samples travel
  in the batches (``batch["skipped"]``) so that an evaluation can count them by reason.

Bad samples (corrupt or truncated videos, unreadable masks, clips too short, driver not visible in the
first frame) and unreadable or truncated shards are skipped with a warning that names them and a
running count by reason; they never end an epoch.
"""

from __future__ import annotations

import glob
import math
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from interdyn.data.clip_spec import PAPER_CLIP, WINDOWS, ClipSpec
from interdyn.data.perturb import MaskPerturbation, boxify
from interdyn.data.sampling import (
    FRAME_SAMPLINGS,
    choose_start,
    clip_offsets,
    effective_fps,
    valid_starts,
)
from interdyn.data.shard_format import SkipSample, decode_sample
from interdyn.data.transforms import CROPS, apply_geometry, joint_transform
from interdyn.data.video import VideoDecodeError, decode_frames, probe_video
from interdyn.errors import DataNotFoundError, InterDynError

_TAR_NAME = re.compile(r"(pipe:[^'\"]+|[^\s'\"<>(),=]+\.tar)")
MAX_SKIPS_IN_A_ROW = 1000  # an endless training stream of bad samples must not spin forever
MAX_EMPTY_SHARDS_IN_A_ROW = 50  # nor one of shards that give no sample at all
MAKE_SHARDS_HINT = "make them first (`make shards`, see docs/data.md) or fix the shard paths"
# The control signal given to the branch (the control-signal ablation) and its channel count. Channel 0 is always
# the driver. ``semantic`` adds the other entities as seen in the first frame (no hint of their motion);
# ``oracle`` adds them in every frame (their true motion: an upper bound, not a usable model).
CONTROL_CHANNELS = {"binary": 3, "boxes": 3, "semantic": 2, "oracle": 2}
# Batch fields whose per-clip values differ in shape; they stay lists.
LIST_FIELDS = ("objects", "object_names", "meta")


class SkippedSampleWarning(UserWarning):
    """A sample or shard was skipped (the message names it and the reason)."""


def _finite_positive(value: Any) -> float | None:
    """``value`` as a float if it is a finite number > 0, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _metadata_number(meta: dict[str, Any], name: str) -> float | None:
    """A positive number of the sample's json; None when missing or 0 (unknown). Anything else (text,
    NaN, infinite, negative, a list...) makes the sample unusable."""
    value = meta.get(name)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value == 0):
        return None
    number = None if isinstance(value, bool) else _finite_positive(value)
    if number is None:
        raise SkipSample("bad_metadata", f"{name} {value!r} is not a positive number")
    return number


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard specs -> shard list. Accepts brace patterns (``a-{000000..000099}.tar``), globs
    (``shards/*.tar``), ``pipe:`` commands (braces expanded, no glob) and lists or ``::``-joined
    strings of these."""
    specs = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for spec in specs:
        for part in str(spec).split("::"):
            for item in braceexpand.braceexpand(part):
                if item.startswith("pipe:") or "://" in item or not glob.has_magic(item):
                    out.append(item)
                else:
                    out.extend(sorted(glob.glob(os.path.expanduser(item))))
    return out


@dataclass
class ClipDecoder:
    """Decodes a shard sample into the compact clip ``{pixel_values (T,3,H,W) uint8, control (T,H,W) bool,
    key, fps, start_frame}`` (expanded to the batch contract by :func:`interdyn.contract.to_contract`).

    Args:
        clip: which frames and what size (:class:`~interdyn.data.clip_spec.ClipSpec`: frame count and
            timing, see :mod:`interdyn.data.sampling`; size and crop, see :mod:`interdyn.data.transforms`;
            the fixed window of evaluation clips).
        random_window: draw each clip's window at random among the valid ones (training) instead of the
            clip's fixed ``window``.
        hflip: random horizontal flips (training).
        require_driver_in_first_frame: only windows whose first frame shows at least
            ``min_driver_pixels`` driver pixels (in the source resolution) are used.
        require_driver_in_clip: only windows where some frame shows the driver (for drivers that
            enter the scene later, as in CLEVRER, where the first-frame rule must be off).
        control_type: ``binary`` driver masks (compact ``(T, H, W)``), ``boxes`` (each frame's driver mask
            replaced by its filled bounding box), ``semantic`` or ``oracle`` (compact ``(T, 2, H, W)``:
            driver, other entities); see ``CONTROL_CHANNELS``. Needs ``objects`` in ``masks.npz`` for the
            last two (clips without them get an empty second channel).
        with_objects: also return the per-object masks (``objects`` (K, T, H, W) bool, after the same crop)
            and ``object_names``, for region metrics.
        perturbation: perturb the driver masks after the crop (evaluation robustness studies).
    """

    clip: ClipSpec = PAPER_CLIP
    random_window: bool = False
    hflip: bool = False
    require_driver_in_first_frame: bool = True
    require_driver_in_clip: bool = False
    min_driver_pixels: int = 1
    control_type: str = "binary"
    with_objects: bool = False
    perturbation: MaskPerturbation | None = None

    def __post_init__(self) -> None:
        if self.control_type not in CONTROL_CHANNELS:
            raise ValueError(
                f"control_type must be one of {tuple(CONTROL_CHANNELS)}, got {self.control_type!r}"
            )
        clip = self.clip = ClipSpec.from_mapping(self.clip)
        if clip.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {clip.crop!r}")
        if clip.fps is None and clip.frame_stride is None:
            raise ValueError("set fps or frame_stride")
        if clip.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {clip.frame_sampling!r}")
        if clip.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {clip.window!r}")

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        clip = self.clip
        needs_objects = self.with_objects or self.control_type in ("semantic", "oracle")
        fields = decode_sample(sample, with_objects=needs_objects)
        key, meta, video, masks = fields.key, fields.meta, fields.video, fields.control
        objects, object_names = fields.objects, fields.object_names
        # 0 or missing: unknown, read from the container; anything else must be a positive number
        source_fps = _metadata_number(meta, "fps")
        num_source = int(_metadata_number(meta, "num_frames") or 0)
        if not source_fps or num_source <= 0:
            try:
                header_frames, header_fps, _, _ = probe_video(video)
            except VideoDecodeError as err:
                raise SkipSample("bad_video", str(err)) from None
            source_fps = source_fps or _finite_positive(header_fps)
            num_source = num_source or int(_finite_positive(header_frames) or 0) or masks.shape[0]
            if not source_fps:
                raise SkipSample("bad_metadata", "no frame rate in the json or the video container")
        num_source = min(num_source, masks.shape[0])
        offsets = clip_offsets(clip.num_frames, source_fps, clip.fps, clip.frame_stride, clip.frame_sampling)
        starts = list(valid_starts(num_source, offsets))
        if not starts:
            raise SkipSample("too_short", f"{num_source} frames at {source_fps:g} fps")
        if self.require_driver_in_first_frame or self.require_driver_in_clip:
            visible = masks[:num_source].reshape(num_source, -1).sum(axis=1) >= self.min_driver_pixels
            if self.require_driver_in_first_frame:
                starts = [s for s in starts if visible[s]]
            if self.require_driver_in_clip:
                starts = [s for s in starts if visible[s + offsets].any()]
            if not starts:
                raise SkipSample("driver_not_visible", "no window shows the driver where it must")
        start = choose_start(starts, "random" if self.random_window else clip.window, rng)
        indices = start + offsets
        try:
            frames = decode_frames(video, indices)
        except VideoDecodeError as err:
            raise SkipSample("bad_video", str(err)) from None
        clip_masks = masks[indices]
        if frames.shape[1:3] != clip_masks.shape[1:]:
            raise SkipSample("size_mismatch", f"video {frames.shape[1:3]} vs masks {clip_masks.shape[1:]}")
        pixels, clip_masks, geometry = joint_transform(
            frames, clip_masks, clip.height, clip.width, clip.crop, self.hflip, rng, with_geometry=True
        )
        clip_objects = None
        if objects is not None and objects.shape[1] >= indices.max() + 1:
            clip_objects = apply_geometry(objects[:, indices], clip.height, clip.width, geometry)
        if self.perturbation is not None:
            clip_masks = self.perturbation(clip_masks, str(key))
        control = self._control(clip_masks, clip_objects)
        out = {
            "pixel_values": pixels,  # uint8 (T, 3, H, W); see interdyn.contract.to_contract
            "control": control,  # bool (T, H, W), or (T, C, H, W) for multi-channel control types
            "key": key,
            # the rate actually played (e.g. 6 for every 2nd frame of 12 fps), not the target
            "fps": effective_fps(source_fps, clip.fps, clip.frame_stride, clip.frame_sampling),
            "start_frame": int(start),
            # for evaluations that need the source (metadata positions, per-object masks)
            "source_indices": torch.as_tensor(indices),
            "geometry": torch.tensor([*geometry[:4], float(geometry[4])], dtype=torch.float64),
            "meta": meta,
        }
        if self.with_objects:
            out["objects"], out["object_names"] = clip_objects, object_names
        return out

    def _control(self, driver: torch.Tensor, objects: torch.Tensor | None) -> torch.Tensor:
        """The compact control of ``control_type`` from the (cropped) driver masks and object masks."""
        if self.control_type == "binary":
            return driver
        if self.control_type == "boxes":
            return boxify(driver)
        others = torch.zeros_like(driver)
        if objects is not None and len(objects):
            others = objects.any(dim=0) & ~driver
            if self.control_type == "semantic":  # where the other entities are at the start, held
                others = others[:1].expand_as(driver)
        return torch.stack([driver, others], dim=1).contiguous()


class ShardClipStream(IterableDataset):
    """IterableDataset over shards; see the module docstring for the train / eval behaviour.

    Args:
        urls: shard specs (see :func:`expand_urls`).
        decoder: turns a raw sample into a clip (:class:`ClipDecoder`, or the cache's decoder).
        train: endless resampled stream (True) or each shard once (False).
        rank, world_size: this process's place among the data-parallel ranks.
        samples_per_worker: training clips each worker yields per epoch (None: endless).
        shuffle_buffer: training sample shuffle buffer size.
        seed: base seed (combined with rank, worker and epoch).
        report_skips: (evaluation) also yield a record ``{"skipped": {"key", "reason"}}`` for every skipped
            sample or shard, which :func:`collate_clips` gathers into ``batch["skipped"]``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        decoder: Callable[[dict[str, Any], random.Random], dict[str, Any]],
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        samples_per_worker: int | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        report_skips: bool = False,
    ) -> None:
        super().__init__()
        self.report_skips = report_skips and not train
        self._pending: list[dict[str, str]] = []
        self.urls = expand_urls(urls)
        local = [u for u in self.urls if not u.startswith("pipe:") and "://" not in u]
        missing = [u for u in local if not os.path.exists(u)]
        if missing and not train:  # an evaluation over part of the set would be silently wrong
            raise DataNotFoundError(
                f"{len(missing)} of {len(self.urls)} evaluation shards do not exist, e.g. {missing[:3]}; "
                f"{MAKE_SHARDS_HINT}"
            )
        if missing:
            warnings.warn(
                f"{len(missing)} training shards do not exist and are left out, e.g. {missing[:3]}",
                stacklevel=2,
            )
            self.urls = [u for u in self.urls if u not in set(missing)]
        if not self.urls:
            raise DataNotFoundError(f"no shards match {urls!r}; {MAKE_SHARDS_HINT}")
        self.decoder, self.train = decoder, train
        self.rank, self.world_size = rank, world_size
        self.samples_per_worker, self.shuffle_buffer, self.seed = samples_per_worker, shuffle_buffer, seed
        self.iterations = 0
        self.skipped: Counter[str] = Counter()

    def _skip(self, reason: str, name: str, detail: str, key: str | None = None, report: bool = True) -> None:
        self.skipped[reason] += 1
        if self.report_skips and report:
            self._pending.append({"key": key or name, "reason": reason})
        warnings.warn(
            f"skipped {name} ({reason}: {detail}); skipped so far by this loader worker: {dict(self.skipped)}",
            SkippedSampleWarning,
            stacklevel=2,
        )

    def _tar_error(self, err: Exception) -> bool:
        # webdataset reports a broken shard from more than one stage: count each shard once per pass.
        found = _TAR_NAME.search(" ".join(str(a) for a in getattr(err, "args", ())) or str(err))
        name = found.group(0) if found else "a shard"
        if name not in self._reported_shards:
            self._reported_shards.add(name)
            # every rank reads every evaluation shard: one of them reports a broken one
            owner = self._shard_index.get(name, 0) % self.world_size == self.rank
            self._skip(
                "bad_shard", name, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}", report=owner
            )
        return True  # keep going with the next sample / shard

    def _shards(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[dict[str, str]]:
        if self.train:
            while True:
                yield {"url": rng.choice(self.urls)}
        else:  # every rank reads every shard (and keeps its share of samples); workers split the shards
            for url in self.urls[worker::num_workers]:
                yield {"url": url}

    def _bounded(self, shards: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
        """``shards``, stopping training after ``MAX_EMPTY_SHARDS_IN_A_ROW`` shards in a row gave no sample
        (unreadable, empty, a failing ``pipe:`` command): the endless training stream would spin forever."""
        self._empty_shards_in_a_row, self._shard_gave_samples = 0, True
        for shard in shards:
            if self._shard_gave_samples:
                self._empty_shards_in_a_row = 0
            else:
                self._empty_shards_in_a_row += 1
                if self.train and self._empty_shards_in_a_row >= MAX_EMPTY_SHARDS_IN_A_ROW:
                    raise DataNotFoundError(
                        f"{self._empty_shards_in_a_row} training shards in a row gave no sample (unreadable, empty "
                        f"or a failing pipe: command; skipped so far: {dict(self.skipped)}); check the shards "
                        f"{self.urls[:3]}"
                    )
            self._shard_gave_samples = False
            yield shard

    def _seen(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        # the tar reader asks for the next shard only once the current one is exhausted
        for sample in samples:
            self._shard_gave_samples = True
            yield sample

    def _mine(self, sample: dict[str, Any], position: dict[str, int]) -> bool:
        """Evaluation: whether this rank decodes ``sample``. Sample ``i`` of shard ``s`` belongs to rank
        ``(s + i) % world_size``; the shard offset spreads the remainders of the shards over the ranks."""
        if self.world_size == 1:
            return True
        url = sample.get("__url__", "")
        if url != position.get("url"):
            position.update(url=url, index=0, shard=self._shard_index.get(url, 0))
        mine = (position["shard"] + position["index"]) % self.world_size == self.rank
        position["index"] += 1
        return mine

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Training streams differ per rank, worker and epoch, and are reproducible under a global seed:
        # the DataLoader draws each worker's seed from the (seeded) main-process RNG every epoch, and
        # persistent workers / in-process iteration count their own epochs.
        self.iterations += 1
        self._reported_shards: set[str] = set()
        worker_seed = info.seed if info is not None else torch.initial_seed()  # both follow seed_everything
        rng = random.Random(
            hash((self.seed, self.rank, worker, worker_seed, self.iterations)) if self.train else self.seed
        )
        shards = self._bounded(self._shards(rng, worker, num_workers))
        samples = self._seen(wds.tarfile_to_samples(handler=self._tar_error)(shards))
        if self.train and self.shuffle_buffer > 1:
            samples = self._shuffled(samples, rng)
        self._shard_index = {url: i for i, url in enumerate(self.urls)}
        self._pending = []
        position: dict[str, Any] = {}
        produced, skipped_in_a_row = 0, 0
        for sample in samples:
            yield from self._flush_skips()  # bad shards are reported from inside the tar reader
            if not self.train and not self._mine(sample, position):
                continue
            key = sample.get("__key__", "?")
            try:
                clip = self.decoder(sample, rng)
            except Exception as err:  # noqa: BLE001 - one bad sample never ends a run
                if isinstance(err, InterDynError):  # a setup error (e.g. a cache built for other clips)
                    raise
                if not isinstance(err, SkipSample):  # an unforeseen value: counted by its error type
                    err = SkipSample(f"error:{type(err).__name__}", str(err))
                skip = err
                self._skip(
                    skip.reason, f"sample '{key}' from {sample.get('__url__', '?')}", skip.detail, key=key
                )
                yield from self._flush_skips()
                skipped_in_a_row += 1
                if self.train and skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    raise DataNotFoundError(
                        f"{skipped_in_a_row} samples in a row were unusable ({dict(self.skipped)}); check the "
                        f"shards {self.urls[:3]}... and the clip settings (num_frames, fps, driver visibility)"
                    ) from None
                continue
            skipped_in_a_row = 0
            yield clip
            produced += 1
            if self.samples_per_worker is not None and produced >= self.samples_per_worker:
                return
        yield from self._flush_skips()

    def _flush_skips(self) -> Iterator[dict[str, Any]]:
        pending, self._pending = self._pending, []
        for record in pending:
            yield {"skipped": record}


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack clips into a batch (tensors stacked; other values and ``LIST_FIELDS`` listed). Records of
    skipped samples (``report_skips``) are listed in ``batch["skipped"]``; a batch of records only is
    ``{"skipped": [...]}``."""
    skipped = [it["skipped"] for it in items if "skipped" in it and len(it) == 1]
    items = [it for it in items if not ("skipped" in it and len(it) == 1)]
    batch: dict[str, Any] = {"skipped": skipped} if skipped else {}
    if not items:
        return batch
    for name in items[0]:
        values = [it[name] for it in items]
        stack = isinstance(values[0], torch.Tensor) and name not in LIST_FIELDS
        batch[name] = torch.stack(values) if stack else values
    return batch
