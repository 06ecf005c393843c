"""Force propagation, as a callback of ``interdyn test``: are objects hit *directly* by the driver
generated better than those hit only *indirectly* (through other objects)? Errors inside each role's
object masks and, on the built-in dataset, the physics error per role (:mod:`interdyn.metrics.force_propagation`);
``force_propagation.md`` / ``.json``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from interdyn.callbacks.clip_sampler import BatchClips, ClipCallback, ClipSampler, gather_ranks, write_report
from interdyn.metrics.force_propagation import (
    REGION_METRICS,
    force_propagation_markdown,
    role_rows,
    role_table,
)
from interdyn.metrics.regions import hit_roles


class ForcePropagation(ClipCallback):
    """Does the model move objects hit indirectly (through other objects) as well as those hit directly?

    For every test clip whose metadata names hit objects (:func:`~interdyn.metrics.regions.hit_roles`:
    the built-in dataset's ``physics.collisions``, restricted to collisions up to the clip's last source
    frame; CLEVRER's ``hit_directly`` / ``hit_indirectly``, recomputed for the clip window when its
    ``collisions`` allow), the clip is sampled and scored per *role*: ``direct`` (objects the driver
    touches), ``indirect`` (objects reached only through other objects) and ``all`` (both).

    The region of a role is the union of its objects' masks, frame by frame, grown by ``dilation``
    pixels (so that a generated object a little off its true place still counts) and without the
    driver's pixels; errors are pooled over the region's pixels on frames ``1..T-1`` (frame 0 is the
    conditioning image), PSNR from the pooled MSE, then averaged over clips and samples. On the built-in
    dataset (``meta["physics"]``) the physics error (pixel distance between the disc found by colour in
    the generated video and its simulated position) is also given per role. A clip with no indirect
    object counts only for the direct (and all) row; clips without hit objects are not sampled.

    Writes ``force_propagation.md`` / ``.json`` (rows direct / indirect / all; columns clips, objects,
    the region metrics, physics error) and logs ``test/force_propagation/<role>/<metric>``.

    Args:
        metrics_region: region metrics (``psnr``, ``mse``, ``mae``).
        num_samples, seed, num_inference_steps: sampling (see :class:`ClipSampler`).
        out_dir: where the files go (default: the logger's run directory).
        physics: report the physics error per role where the metadata has the simulation.
        dilation: pixels added around the objects' masks.

    Batch keys: ``pixel_values``, ``control``, ``key``, ``meta`` (list of dicts), ``objects`` (list per
    clip of bool ``(K, T, H, W)`` masks at the frames' resolution, or None) and ``object_names`` (list
    per clip of ``K`` names); ``source_indices`` and ``geometry`` for the physics error.
    """

    def __init__(
        self,
        metrics_region: tuple[str, ...] | list[str] = ("psnr", "mse"),
        num_samples: int = 1,
        seed: int = 42,
        num_inference_steps: int | None = None,
        out_dir: str | None = None,
        physics: bool = True,
        dilation: int = 2,
    ) -> None:
        super().__init__()
        self.sampler = ClipSampler(num_samples, seed, num_inference_steps)
        unknown = set(metrics_region) - set(REGION_METRICS)
        if unknown:
            raise ValueError(f"unknown region metrics {sorted(unknown)}; choose from {REGION_METRICS}")
        self.metrics_region = list(metrics_region)
        self.out_dir, self.physics, self.dilation = out_dir, physics, dilation
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None
        self.results: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.shape = [], None
        self.counts = dict.fromkeys(
            ("clips", "with_hits", "with_indirect", "no_roles", "no_object_masks", "unscored"), 0
        )

    def on_test_clips(self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips) -> None:
        pixels = clips.pixels
        metas, objects, names = (clips.field(name) for name in ("meta", "objects", "object_names"))
        for i, key in enumerate(clips.keys):
            self.counts["clips"] += 1
            indices, geometry = clips.timing(i)
            roles = hit_roles(metas[i], max(indices) if indices else None)
            if roles is None or not (roles[0] or roles[1]):
                self.counts["no_roles"] += 1
                continue
            self.counts["with_hits"] += 1
            self.counts["with_indirect"] += bool(roles[1])
            physics = bool(self.physics and "physics" in metas[i] and indices and geometry)
            if objects[i] is None and not physics:
                self.counts["unscored"] += 1  # nothing to measure: not worth sampling
                continue
            if objects[i] is None:
                self.counts["no_object_masks"] += 1
            elif (
                tuple(objects[i].shape[-2:]) != tuple(pixels.shape[-2:])
                or objects[i].shape[1] != pixels.shape[1]
            ):
                raise ValueError(
                    f"{key}: batch['objects'] is {tuple(objects[i].shape)}; it must be (K, T, H, W) with the "
                    f"frames' T, H, W {(pixels.shape[1], *pixels.shape[-2:])}"
                )
            self._score(clips, i, key, roles, metas[i], objects[i], names[i], physics, pl_module)

    def _score(
        self,
        clips: BatchClips,
        i: int,
        key: str,
        roles: tuple[list[str], list[str]],
        meta: dict[str, Any],
        objects: torch.Tensor | None,
        names: list[str] | None,
        physics: bool,
        pl_module: L.LightningModule,
    ) -> None:
        """Sample clip ``i`` of the batch and keep its rows (the physics error only when ``physics``)."""
        pixels, control = clips.clip(i)
        samples = self.sampler.sample(pl_module, pixels, control, key)
        self.shape = tuple(samples.shape[1:])
        indices, geometry = clips.timing(i) if physics else (None, None)
        self.rows += role_rows(
            key,
            samples,
            (pixels[0] + 1) / 2,
            control[0, :, 0] > 0,
            roles,
            meta,
            objects,
            names,
            self.metrics_region,
            self.dilation,
            indices,
            geometry,
        )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        everyone = gather_ranks({"rows": self.rows, "counts": self.counts, "shape": self.shape})
        rows = [r for rank in everyone for r in rank["rows"]]
        counts = {k: sum(rank["counts"][k] for rank in everyone) for k in self.counts}
        shape = next((rank["shape"] for rank in everyone if rank["shape"]), None)
        table = role_table(rows, self.metrics_region)
        for role, entry in table.items():
            for name, value in entry.items():
                if isinstance(value, float) and math.isfinite(value):
                    pl_module.log(f"test/force_propagation/{role}/{name}", value, rank_zero_only=True)
        protocol = {
            **self.sampler.protocol(pl_module, shape),
            "dilation": self.dilation,
            "frames_scored": "1..T-1",
        }
        self.results = {"roles": table, "counts": counts, "protocol": protocol, "per_clip": rows}
        markdown = force_propagation_markdown(table, counts, protocol, self.metrics_region)
        write_report(trainer, self.out_dir, "force_propagation", self.results, markdown, "Force propagation")
