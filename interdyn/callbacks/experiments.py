"""Test-time experiments beyond the paper's SSV2 table, as callbacks of ``interdyn test``.

- :class:`MaskNoiseSweep`: robustness to noisy driver masks. Every test clip is sampled again with its
  masks perturbed (dilate, erode, drop, jitter, boxify at several severities) and scored against the
  ground truth; ``mask_noise.md`` / ``.json`` hold one row per perturbation level.
- :class:`ForcePropagation`: are objects hit *directly* by the driver generated better than those hit
  only *indirectly* (through other objects)? Errors inside each role's object masks and, on the
  built-in dataset, the physics error per role; ``force_propagation.md`` / ``.json``.
- :class:`CounterfactualEvaluation`: do different driver motions from one first frame give different,
  matching outcomes? :func:`~interdyn.metrics.counterfactual.counterfactual_report` over the test
  split's groups; ``counterfactual.md`` / ``.json``.

Like :class:`~interdyn.callbacks.evaluation.VideoEvaluation`, every clip's samples are seeded with
``key_seed(seed, key)`` (the same videos whatever the batch size, rank or order), the results of all
ranks are gathered with ``all_gather_object`` and rank 0 writes the files atomically into ``out_dir``
(default: the logger's run directory) and prints where they are.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from interdyn.callbacks.evaluation import ClipSampling, gather_objects
from interdyn.contract import has_clips
from interdyn.data.perturb import KINDS, MaskPerturbation, check_severity, severity_levels
from interdyn.files import write_atomic
from interdyn.metrics.counterfactual import CounterfactualMember, counterfactual_report, report_to_markdown
from interdyn.metrics.regions import (
    hit_roles,
    physics_error_of,
    region_errors,
    role_region,
    shrink_masks,
    shrink_video,
)
from interdyn.metrics.suite import ALL_METRICS, PAPER_COLUMNS, VideoMetrics, summarize, to_uint8

CLEAN = "clean"
REGION_METRICS = ("psnr", "mse", "mae")
ROLES = ("direct", "indirect", "all")


# ---------------------------------------------------------------------------------------------- shared
def _folder(trainer: L.Trainer, out_dir: str | None) -> Path:
    """The output folder; call it on every rank (``trainer.log_dir`` broadcasts from rank 0)."""
    return Path(out_dir or trainer.log_dir or trainer.default_root_dir)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (strict JSON), numpy / torch scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic | torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(folder: Path, stem: str, payload: dict[str, Any], markdown: str, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{stem}.json", json.dumps(_json_safe(payload), indent=2))
    write_atomic(folder / f"{stem}.md", markdown)
    print(f"\n{title} written to {folder / f'{stem}.md'}:\n\n{markdown}")


def _per_clip(batch: dict[str, Any], name: str, n: int) -> Any:
    """``batch[name]`` (a list or a tensor with one entry per clip), or ``n`` Nones when absent."""
    value = batch.get(name)
    return [None] * n if value is None else value


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _mean(values: list[float]) -> float:
    """Mean ignoring None and NaN (an infinite PSNR of an exact match stays infinite)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


# ---------------------------------------------------------------------------------------- mask noise
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


class MaskNoiseSweep(ClipSampling, L.Callback):
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
        num_samples, seed, num_inference_steps: sampling (see ``VideoEvaluation``).
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
        ClipSampling.__init__(self, num_samples, seed, num_inference_steps)
        L.Callback.__init__(self)
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

    @staticmethod
    def label(kind: str, severity: float) -> str:
        """``"clean"`` or ``"<kind>=<severity>"`` (as :attr:`MaskPerturbation.label`)."""
        return CLEAN if kind == CLEAN else f"{kind}={severity:g}"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = VideoMetrics(self.metrics, device=pl_module.device, **self.options)
        self.evaluators, self.changed = {}, {}
        for kind, severity in self.levels:
            # The levels share the networks (I3D, tracker) of one VideoMetrics; each has its own results.
            self.evaluators[self.label(kind, severity)] = base.spawn()
            self.changed[self.label(kind, severity)] = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not has_clips(batch):  # only records of skipped samples
            return
        pixels, control = batch["pixel_values"], batch["control"]
        keys = self._keys(trainer, batch, batch_idx)
        metas = _per_clip(batch, "meta", len(keys))
        for i, key in enumerate(keys):
            masks = control[i, :, 0] > 0
            extra = {
                "masks": masks,
                "meta": metas[i],
                "source_indices": batch["source_indices"][i].tolist() if "source_indices" in batch else None,
                "geometry": batch["geometry"][i].tolist() if "geometry" in batch else None,
            }
            for kind, severity in self.levels:
                label = self.label(kind, severity)
                noisy = (
                    masks
                    if kind == CLEAN
                    else MaskPerturbation(kind, severity, self.perturbation_seed)(masks, key)
                )
                changed = (noisy != masks).sum().item()
                self.changed[label].append((changed / masks.numel(), changed / max(1, masks.sum().item())))
                perturbed = replace_driver(control[i : i + 1], noisy[None])
                samples = self._sample(pl_module, pixels[i : i + 1], perturbed, key)
                self.evaluators[label].update((pixels[i] + 1) / 2, samples, key, **extra)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = {label: (ev.state(), self.changed[label]) for label, ev in self.evaluators.items()}
        everyone = gather_objects(local)
        rows, shape = [], None
        for kind, severity in self.levels:
            label = self.label(kind, severity)
            states = [rank[label][0] for rank in everyone]
            changed = [c for rank in everyone for c in rank[label][1]]
            shape = shape or next((s["shape"] for s in states if s["shape"]), None)
            values = summarize(states, self.metrics)
            rows.append(
                {
                    "label": label,
                    "kind": kind,
                    "severity": severity,
                    "changed_fraction": _mean([c[0] for c in changed]),
                    "changed_vs_mask": _mean([c[1] for c in changed]),
                    **values,
                }
            )
            for name, value in values.items():
                if isinstance(value, float) and math.isfinite(value):
                    pl_module.log(f"test/mask_noise/{label}/{name}", value, rank_zero_only=True)
        protocol = {
            **self._protocol(pl_module, shape),
            "videos": rows[0]["num_videos"] if rows else 0,
            "perturbation_seed": self.perturbation_seed,
            "metrics": self.metrics,
        }
        self.results = {"levels": rows, "protocol": protocol}
        folder = _folder(trainer, self.out_dir)
        if trainer.is_global_zero:
            _write(folder, "mask_noise", self.results, self.markdown(rows, protocol), "Mask-noise sweep")

    @staticmethod
    def markdown(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> str:
        """The sweep's table: one row per level, then the protocol."""
        titles = dict(PAPER_COLUMNS)
        columns = [k for k, _ in PAPER_COLUMNS if any(k in r for r in rows)]
        lines = [
            "| perturbation | changed px (frame) | changed px (vs mask) | "
            + " | ".join(titles[k] for k in columns)
            + " |",
            "|---|---|---|" + "---|" * len(columns),
        ]
        for r in rows:
            values = " | ".join(_fmt(r.get(k)) for k in columns)
            lines.append(
                f"| {r['label']} | {_fmt(r['changed_fraction'])} | {_fmt(r['changed_vs_mask'])} | {values} |"
            )
        lines += [
            "",
            "Changed px: fraction of the clip's mask pixels (T x H x W) that the perturbation flipped, and the "
            "same divided by the driver's area.",
            "Protocol: " + ", ".join(f"{k}: {v}" for k, v in protocol.items()) + ".",
        ]
        return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- force propagation
class ForcePropagation(ClipSampling, L.Callback):
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
        num_samples, seed, num_inference_steps: sampling (see ``VideoEvaluation``).
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
        ClipSampling.__init__(self, num_samples, seed, num_inference_steps)
        L.Callback.__init__(self)
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

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not has_clips(batch):  # only records of skipped samples
            return
        pixels, control = batch["pixel_values"], batch["control"]
        keys = self._keys(trainer, batch, batch_idx)
        metas, objects, names = (
            _per_clip(batch, name, len(keys)) for name in ("meta", "objects", "object_names")
        )
        for i, key in enumerate(keys):
            self.counts["clips"] += 1
            indices = batch["source_indices"][i].tolist() if "source_indices" in batch else None
            roles = hit_roles(metas[i], max(indices) if indices else None)
            if roles is None or not (roles[0] or roles[1]):
                self.counts["no_roles"] += 1
                continue
            self.counts["with_hits"] += 1
            self.counts["with_indirect"] += bool(roles[1])
            geometry = batch["geometry"][i].tolist() if "geometry" in batch else None
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
            samples = self._sample(pl_module, pixels[i : i + 1], control[i : i + 1], key)
            self.shape = tuple(samples.shape[1:])
            self._score(
                key,
                samples,
                (pixels[i] + 1) / 2,
                control[i, :, 0] > 0,
                roles,
                metas[i],
                objects[i],
                names[i],
                indices if physics else None,
                geometry if physics else None,
            )

    def _score(
        self,
        key: str,
        samples: torch.Tensor,
        real: torch.Tensor,
        driver: torch.Tensor,
        roles: tuple[list[str], list[str]],
        meta: dict[str, Any],
        objects: torch.Tensor | None,
        names: list[str] | None,
        source_indices: list[int] | None,
        geometry: list[float] | None,
    ) -> None:
        """Rows per sample and role; the physics error only when ``source_indices``/``geometry`` are given."""
        direct, indirect = roles
        members = {"direct": direct, "indirect": indirect, "all": direct + indirect}
        with_physics = source_indices is not None and geometry is not None
        disc_names = list(meta.get("objects", [])) if with_physics else []
        names = [str(n) for n in names] if names is not None else []
        regions = {}
        for role, role_names in members.items():
            if objects is not None and role_names:
                regions[role] = role_region(objects, names, role_names, self.dilation, driver)
        for n, fake in enumerate(samples):
            fake_u8 = to_uint8(fake) if with_physics else None
            for role, role_names in members.items():
                if not role_names:
                    continue
                row: dict[str, Any] = {"key": key, "sample": n, "role": role, "objects": len(role_names)}
                region, masked = regions.get(role, (None, 0))
                if region is not None:
                    errors = region_errors(fake, real, region)
                    row.update({"masked_objects": masked, "region_pixels": errors["pixels"]})
                    row.update({f"region_{m}": errors[m] for m in self.metrics_region})
                if with_physics:
                    discs = [disc_names.index(name) for name in role_names if name in disc_names]
                    result = physics_error_of(fake_u8, meta, source_indices, geometry, discs)
                    row["physics_position_error"], row["physics_found"] = (
                        result["position_error"],
                        result["found"],
                    )
                self.rows.append(row)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        everyone = gather_objects({"rows": self.rows, "counts": self.counts, "shape": self.shape})
        rows = [r for rank in everyone for r in rank["rows"]]
        counts = {k: sum(rank["counts"][k] for rank in everyone) for k in self.counts}
        shape = next((rank["shape"] for rank in everyone if rank["shape"]), None)
        table = {}
        for role in ROLES:
            mine = [r for r in rows if r["role"] == role]
            first = {r["key"]: r["objects"] for r in mine if r["sample"] == 0}
            entry: dict[str, Any] = {"clips": len(first), "objects": sum(first.values())}
            for m in self.metrics_region:
                entry[f"region_{m}"] = _mean([r.get(f"region_{m}", math.nan) for r in mine])
            entry["region_clips"] = len({r["key"] for r in mine if r.get("region_pixels", 0) > 0})
            entry["physics_position_error"] = _mean([r.get("physics_position_error", math.nan) for r in mine])
            entry["physics_found"] = _mean([r.get("physics_found", math.nan) for r in mine])
            table[role] = entry
            for name, value in entry.items():
                if isinstance(value, float) and math.isfinite(value):
                    pl_module.log(f"test/force_propagation/{role}/{name}", value, rank_zero_only=True)
        protocol = {**self._protocol(pl_module, shape), "dilation": self.dilation, "frames_scored": "1..T-1"}
        self.results = {"roles": table, "counts": counts, "protocol": protocol, "per_clip": rows}
        folder = _folder(trainer, self.out_dir)
        if trainer.is_global_zero:
            _write(
                folder,
                "force_propagation",
                self.results,
                self.markdown(table, counts, protocol),
                "Force propagation",
            )

    def markdown(
        self, table: dict[str, dict[str, Any]], counts: dict[str, int], protocol: dict[str, Any]
    ) -> str:
        """The direct / indirect / all table, then the clip counts and the protocol."""
        titles = {"psnr": "region PSNR", "mse": "region MSE", "mae": "region MAE"}
        lines = [
            "| role | clips | objects | "
            + " | ".join(titles[m] for m in self.metrics_region)
            + " | physics error (px) | found |",
            "|---|---|---|" + "---|" * (len(self.metrics_region) + 2),
        ]
        for role, entry in table.items():
            values = " | ".join(_fmt(entry[f"region_{m}"]) for m in self.metrics_region)
            lines.append(
                f"| {role} | {entry['clips']} | {entry['objects']} | {values} | "
                f"{_fmt(entry['physics_position_error'])} | {_fmt(entry['physics_found'])} |"
            )
        lines += [
            "",
            f"Clips: {counts['clips']} seen, {counts['with_hits']} with hit objects "
            f"({counts['with_indirect']} with indirect hits), {counts['no_roles']} without, "
            f"{counts['no_object_masks']} scored without object masks (physics only), "
            f"{counts['unscored']} with neither object masks nor physics (not sampled).",
            "Regions: each role's object masks per frame, dilated, minus the driver; errors pooled over "
            "frames 1..T-1.",
            "Protocol: " + ", ".join(f"{k}: {v}" for k, v in protocol.items()) + ".",
        ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- counterfactuals
class CounterfactualEvaluation(ClipSampling, L.Callback):
    """Counterfactual report over the test clips that belong to a group (``meta["group"]``).

    For every grouped clip the samples and the ground truth are kept, shrunk so that the longer side is
    at most ``max_side`` and stored as uint8 (to bound memory), with the clip's driver masks (shrunk
    conservatively: a pixel touched by the driver stays driver). At the end the members of all ranks
    are gathered and :func:`~interdyn.metrics.counterfactual.counterfactual_report` scores each group:
    with ``region="outside_driver"`` the distances are measured, frame by frame, outside the union of
    the drivers of all members (the outcome, not the control being reproduced); with ``"all"`` over
    whole frames. Clips without a group are not sampled (counted).

    Writes ``counterfactual.md`` / ``.json`` (per-group rows and the overall row: self error, cross
    error, discrimination, accuracy vs chance, spread ratio) and logs ``test/counterfactual/<metric>``.

    Args:
        num_samples, seed, num_inference_steps: sampling (see ``VideoEvaluation``).
        region: ``"outside_driver"`` or ``"all"``.
        out_dir: where the files go (default: the logger's run directory).
        max_side: the longer side of the kept videos.

    Batch keys: ``pixel_values``, ``control``, ``key``, ``meta`` (``group``, optionally ``variant``).
    """

    def __init__(
        self,
        num_samples: int = 1,
        seed: int = 42,
        num_inference_steps: int | None = None,
        region: Literal["outside_driver", "all"] = "outside_driver",
        out_dir: str | None = None,
        max_side: int = 128,
    ) -> None:
        ClipSampling.__init__(self, num_samples, seed, num_inference_steps)
        L.Callback.__init__(self)
        if region not in ("outside_driver", "all"):
            raise ValueError(f"region must be 'outside_driver' or 'all', got {region!r}")
        self.region, self.out_dir, self.max_side = region, out_dir, max_side
        self.members: list[dict[str, Any]] = []
        self.ungrouped = 0
        self.shape: tuple[int, ...] | None = None
        self.results: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.members, self.ungrouped, self.shape = [], 0, None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not has_clips(batch):  # only records of skipped samples
            return
        pixels, control = batch["pixel_values"], batch["control"]
        keys = self._keys(trainer, batch, batch_idx)
        metas = _per_clip(batch, "meta", len(keys))
        for i, key in enumerate(keys):
            meta = metas[i] or {}
            if meta.get("group") is None:
                self.ungrouped += 1
                continue
            samples = self._sample(pl_module, pixels[i : i + 1], control[i : i + 1], key)
            self.shape = tuple(samples.shape[1:])
            self.members.append(
                {
                    "key": key,
                    "group": str(meta["group"]),
                    "variant": meta.get("variant"),
                    "generated": shrink_video(samples, self.max_side),
                    "ground_truth": shrink_video((pixels[i] + 1) / 2, self.max_side),
                    "driver": shrink_masks(control[i, :, 0] > 0, self.max_side),
                }
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        everyone = gather_objects({"members": self.members, "ungrouped": self.ungrouped, "shape": self.shape})
        members = {m["key"]: m for rank in everyone for m in rank["members"]}  # a key counts once
        ungrouped = sum(rank["ungrouped"] for rank in everyone)
        shape = next((rank["shape"] for rank in everyone if rank["shape"]), None)
        groups: dict[str, list[CounterfactualMember]] = defaultdict(list)

        def order(m: dict[str, Any]) -> tuple[str, int, str]:
            variant = m["variant"] if isinstance(m["variant"], int) else 1 << 30
            return m["group"], variant, m["key"]

        for m in sorted(members.values(), key=order):
            region = ~m["driver"] if self.region == "outside_driver" else None
            groups[m["group"]].append(
                CounterfactualMember(m["key"], m["generated"], m["ground_truth"], region)
            )
        report = counterfactual_report(dict(groups))
        for name, value in report["overall"].items():
            if math.isfinite(value):
                pl_module.log(f"test/counterfactual/{name}", value, rank_zero_only=True)
        stored = next(iter(members.values()))["ground_truth"].shape if members else None
        protocol = {
            **self._protocol(pl_module, shape),
            "region": self.region,
            "distance": "masked MSE over frames 1..T-1",
            "compared_at": f"{stored[-2]}x{stored[-1]}" if stored else None,
        }
        counts = {"grouped_clips": len(members), "ungrouped_clips": ungrouped, "groups": len(groups)}
        self.results = {
            **report,
            "counts": counts,
            "protocol": protocol,
            "members": {k: m["group"] for k, m in members.items()},
        }
        folder = _folder(trainer, self.out_dir)
        if trainer.is_global_zero:
            text = (
                report_to_markdown(report)
                + f"\nClips: {len(members)} in {len(groups)} group(s), {ungrouped} without a group (ignored).\n"
                + "Protocol: "
                + ", ".join(f"{k}: {v}" for k, v in protocol.items())
                + ".\n"
            )
            _write(folder, "counterfactual", self.results, text, "Counterfactual report")
