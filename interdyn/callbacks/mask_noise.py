"""Robustness to noisy driver masks, as a callback of ``interdyn test``.

Every test clip is sampled again with its masks perturbed (dilate, erode, drop, jitter, boxify at
several severities) and scored against the ground truth; ``mask_noise.md`` / ``.json`` hold one row per
perturbation level (:mod:`interdyn.metrics.mask_noise`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from interdyn.callbacks.clip_sampler import BatchClips, ClipCallback, ClipSampler, gather_ranks, write_report
from interdyn.data.perturb import KINDS, MaskPerturbation, check_severity, severity_levels
from interdyn.metrics.mask_noise import CLEAN, changed_pixels, level_label, level_row, mask_noise_markdown
from interdyn.metrics.suite import ALL_METRICS, VideoMetrics, summarize


def replace_driver(control: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """A copy of ``control`` ``(B, T, C, H, W)`` in ``{-1, 1}`` whose driver is ``masks`` ``(B, T, H, W)``:
    every channel for 1- and 3-channel controls (the mask repeated), only channel 0 otherwise (the other
    channels carry something else and are kept)."""
    encoded = masks.to(control.dtype) * 2 - 1
    out = control.clone()
    if control.shape[2] in (1, 3):
        out[:] = encoded[:, :, None]
    else:
        out[:, :, 0] = encoded
    return out


class MaskNoiseSweep(ClipCallback):
    """How much worse do the videos get when the driver masks are noisy?

    For every test clip and every perturbation level, the clip's driver masks (``control[:, :, 0] > 0``,
    at the clip's resolution) are perturbed with ``MaskPerturbation(kind, severity, perturbation_seed)``
    (deterministic per clip key), the control rebuilt from them (:func:`replace_driver`) and the clip
    sampled with the same per-clip seed as every other level, so the levels differ only by the masks.
    Each level is scored by its own :class:`~interdyn.metrics.suite.VideoMetrics` against the ground
    truth (motion fidelity's query box and the physics check use the *clean* masks and metadata).
    Severity 0 leaves the masks unchanged for every kind, so it is sampled once and reported as the
    ``clean`` row, which is always included as the reference.

    Writes ``mask_noise.md`` (one row per level, one column per metric, plus the mean fraction of the
    clip's mask pixels that the perturbation changed, and the same relative to the mask area) and
    ``mask_noise.json``; logs ``test/mask_noise/<kind>=<severity>/<metric>``.

    Args:
        metrics: names from :data:`~interdyn.metrics.suite.ALL_METRICS` (default: ssim, psnr).
        perturbations: kind -> severities (default: every kind at :func:`severity_levels`). Severities
            are in the pixels of the clip as the model sees it.
        num_samples, seed, num_inference_steps: sampling (see :class:`ClipSampler`).
        i3d_weights, tracker: see ``VideoMetrics``.
        out_dir: where the files go (default: the logger's run directory).
        perturbation_seed: seed of the random kinds (drop, jitter).

    Batch keys: ``pixel_values``, ``control``, ``key`` (and ``meta``, ``source_indices``, ``geometry``
    for the physics metric).
    """

    def __init__(
        self,
        metrics: list[str] | None = None,
        perturbations: dict[str, list[float]] | None = None,
        num_samples: int = 1,
        seed: int = 42,
        num_inference_steps: int | None = None,
        i3d_weights: str | None = None,
        tracker: str = "lk",
        out_dir: str | None = None,
        perturbation_seed: int = 0,
    ) -> None:
        super().__init__()
        self.sampler = ClipSampler(num_samples, seed, num_inference_steps)
        self.metrics = list(metrics) if metrics is not None else ["ssim", "psnr"]
        unknown = set(self.metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
        if perturbations is None:
            perturbations = {kind: severity_levels(kind) for kind in KINDS}
        self.levels: list[tuple[str, float]] = [(CLEAN, 0)]  # (kind, severity), the clean one first
        for kind, severities in perturbations.items():
            for severity in severities:
                check_severity(kind, severity)
                if severity != 0 and (kind, severity) not in self.levels:
                    self.levels.append((kind, severity))
        self.perturbation_seed = perturbation_seed
        self.options = {"i3d_weights": i3d_weights, "tracker": tracker}
        self.out_dir = out_dir
        self.evaluators: dict[str, VideoMetrics] = {}
        self.changed: dict[str, list[tuple[float, float]]] = {}
        self.results: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = VideoMetrics(self.metrics, device=pl_module.device, **self.options)
        self.evaluators, self.changed = {}, {}
        for kind, severity in self.levels:
            # The levels share the networks (I3D, tracker) of one VideoMetrics; each has its own results.
            self.evaluators[level_label(kind, severity)] = base.spawn()
            self.changed[level_label(kind, severity)] = []

    def on_test_clips(self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips) -> None:
        pixels, control = clips.pixels, clips.control
        metas = clips.field("meta")
        for i, key in enumerate(clips.keys):
            masks = control[i, :, 0] > 0
            source_indices, geometry = clips.timing(i)
            extra = {"masks": masks, "meta": metas[i], "source_indices": source_indices, "geometry": geometry}
            for kind, severity in self.levels:
                label = level_label(kind, severity)
                noisy = (
                    masks
                    if kind == CLEAN
                    else MaskPerturbation(kind, severity, self.perturbation_seed)(masks, key)
                )
                self.changed[label].append(changed_pixels(masks, noisy))
                perturbed = replace_driver(control[i : i + 1], noisy[None])
                samples = self.sampler.sample(pl_module, pixels[i : i + 1], perturbed, key)
                self.evaluators[label].update((pixels[i] + 1) / 2, samples, key, **extra)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = {label: (ev.state(), self.changed[label]) for label, ev in self.evaluators.items()}
        everyone = gather_ranks(local)
        rows, shape = [], None
        for kind, severity in self.levels:
            label = level_label(kind, severity)
            states = [rank[label][0] for rank in everyone]
            changed = [c for rank in everyone for c in rank[label][1]]
            shape = shape or next((s["shape"] for s in states if s["shape"]), None)
            values = summarize(states, self.metrics)
            rows.append(level_row(kind, severity, changed, values))
            for name, value in values.items():
                if isinstance(value, float) and math.isfinite(value):
                    pl_module.log(f"test/mask_noise/{label}/{name}", value, rank_zero_only=True)
        protocol = {
            **self.sampler.protocol(pl_module, shape),
            "videos": rows[0]["num_videos"] if rows else 0,
            "perturbation_seed": self.perturbation_seed,
            "metrics": self.metrics,
        }
        self.results = {"levels": rows, "protocol": protocol}
        markdown = mask_noise_markdown(rows, protocol)
        write_report(trainer, self.out_dir, "mask_noise", self.results, markdown, "Mask-noise sweep")
