"""Counterfactuals, as a callback of ``interdyn test``: do different driver motions from one first frame
give different, matching outcomes? :func:`~interdyn.metrics.counterfactual.counterfactual_report` over
the test split's groups; ``counterfactual.md`` / ``.json``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L

from interdyn.callbacks.clip_sampler import BatchClips, ClipCallback, ClipSampler, gather_ranks, write_report
from interdyn.metrics.counterfactual import (
    counterfactual_report,
    group_members,
    group_object_members,
    object_report,
    object_report_to_markdown,
    report_to_markdown,
)
from interdyn.metrics.physics import disc_positions, has_simulation
from interdyn.metrics.regions import shrink_masks, shrink_video
from interdyn.metrics.report import protocol_line
from interdyn.utils.render import to_uint8


class CounterfactualEvaluation(ClipCallback):
    """Counterfactual report over the test clips that belong to a group (``meta["group"]``).

    For every grouped clip the samples and the ground truth are kept, shrunk so that the longer side is
    at most ``max_side`` and stored as uint8 (to bound memory), with the clip's driver masks (shrunk
    conservatively: a pixel touched by the driver stays driver). At the end the members of all ranks
    are gathered and :func:`~interdyn.metrics.counterfactual.counterfactual_report` scores each group:
    with ``region="outside_driver"`` the distances are measured, frame by frame, outside the union of
    the drivers of all members (the outcome, not the control being reproduced); with ``"all"`` over
    whole frames. Clips without a group are not sampled (counted).

    When every grouped clip carries its simulation (``meta["physics"]``, the built-in world), the same
    test is also scored on the discs: :func:`~interdyn.metrics.counterfactual.object_report` of where
    each sample's discs are found (by colour, at full size) against where each member's path puts them.
    It sees only the discs, so it measures the reaction whatever the samples' blur or colour cast.

    Writes ``counterfactual.md`` / ``.json`` (per-group rows and the overall row: self error, cross
    error, discrimination, accuracy vs chance, spread ratio; the discs' version under ``"objects"``) and
    logs ``test/counterfactual/<metric>`` (and ``test/counterfactual/objects_<metric>``).

    Args:
        num_samples, seed, num_inference_steps: sampling (see :class:`ClipSampler`).
        region: ``"outside_driver"`` or ``"all"``.
        out_dir: where the files go (default: the logger's run directory).
        max_side: the longer side of the kept videos.

    Batch keys: ``pixel_values``, ``control``, ``key``, ``meta`` (``group``, optionally ``variant``); for
    the discs' version also ``meta["physics"]``, ``source_indices`` and ``geometry``.
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
        super().__init__()
        self.sampler = ClipSampler(num_samples, seed, num_inference_steps)
        if region not in ("outside_driver", "all"):
            raise ValueError(f"region must be 'outside_driver' or 'all', got {region!r}")
        self.region, self.out_dir, self.max_side = region, out_dir, max_side
        self.members: list[dict[str, Any]] = []
        self.ungrouped = 0
        self.shape: tuple[int, ...] | None = None
        self.results: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.members, self.ungrouped, self.shape = [], 0, None

    def on_test_clips(self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips) -> None:
        pixels, control = clips.pixels, clips.control
        metas = clips.field("meta")
        grouped = [i for i in range(len(clips.keys)) if (metas[i] or {}).get("group") is not None]
        self.ungrouped += len(clips.keys) - len(grouped)
        if not grouped:
            return
        # the batch's grouped clips sampled together, each with its key's seed
        drawn = self.sampler.sample_batch(
            pl_module, pixels[grouped], control[grouped], [clips.keys[i] for i in grouped]
        )
        for i, samples in zip(grouped, drawn, strict=True):
            key, meta = clips.keys[i], metas[i]
            self.shape = tuple(samples.shape[1:])
            member = {
                "key": key,
                "group": str(meta["group"]),
                "variant": meta.get("variant"),
                "generated": shrink_video(samples, self.max_side),
                "ground_truth": shrink_video((pixels[i] + 1) / 2, self.max_side),
                "driver": shrink_masks(control[i, :, 0] > 0, self.max_side),
            }
            source_indices, geometry = clips.timing(i)
            if has_simulation(meta, source_indices, geometry):
                videos = to_uint8(samples.permute(0, 1, 3, 4, 2)).cpu().numpy()
                member |= disc_positions(videos, meta, source_indices, geometry)
            self.members.append(member)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        everyone = gather_ranks({"members": self.members, "ungrouped": self.ungrouped, "shape": self.shape})
        members = {m["key"]: m for rank in everyone for m in rank["members"]}  # a key counts once
        ungrouped = sum(rank["ungrouped"] for rank in everyone)
        shape = next((rank["shape"] for rank in everyone if rank["shape"]), None)
        groups = group_members(members.values(), outside_driver=self.region == "outside_driver")
        report = counterfactual_report(groups)
        for name, value in report["overall"].items():
            if math.isfinite(value):
                pl_module.log(f"test/counterfactual/{name}", value, rank_zero_only=True)
        stored = next(iter(members.values()))["ground_truth"].shape if members else None
        protocol = {
            **self.sampler.protocol(pl_module, shape),
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
        with_discs = [m for m in members.values() if "found" in m]
        if with_discs and len(with_discs) == len(members):
            discs = object_report(group_object_members(with_discs))
            self.results["objects"] = discs
            for name, value in discs["overall"].items():
                if math.isfinite(value):
                    pl_module.log(f"test/counterfactual/objects_{name}", value, rank_zero_only=True)
        text = (
            report_to_markdown(report)
            + (
                "\n" + object_report_to_markdown(self.results["objects"], "discs")
                if "objects" in self.results
                else ""
            )
            + f"\nClips: {len(members)} in {len(groups)} group(s), {ungrouped} without a group (ignored).\n"
            + protocol_line(protocol)
            + "\n"
        )
        write_report(trainer, self.out_dir, "counterfactual", self.results, text, "Counterfactual report")
