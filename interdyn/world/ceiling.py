"""What the counterfactual test can reach through the world's VAE: the test groups' ground truths,
encoded and decoded by the SVD's VAE, scored as if they were samples.

A model's samples can be no better than what its VAE reconstructs, so this is the ceiling of every
model on that VAE. Near 1.0 means that the VAE keeps what tells the outcomes of a group apart, and
that a model below it is limited by its UNet or branch, not by the VAE. Clips of the built-in world are
also scored on their discs (where they are found in the reconstructions), as ``interdyn test`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from interdyn.contract import to_contract
from interdyn.errors import InterDynError
from interdyn.metrics.counterfactual import (
    counterfactual_report,
    group_members,
    group_object_members,
    object_report,
)
from interdyn.metrics.physics import disc_positions, has_simulation
from interdyn.utils.render import to_uint8


def test_clips(
    test_shards: str, size: int, limit: int | None = None, num_frames: int | None = None
) -> Iterator[dict[str, Any]]:
    """The clips of ``test_shards`` in ``interdyn test``'s order (its first ``limit`` when given), cut as the
    demo's tests cut them (``num_frames`` from the start, the paper's 14 when None, at ``size`` x ``size``),
    each with ``key``, ``group`` and ``variant`` (None outside a counterfactual group), ``pixel_values``
    ``(T, 3, H, W)`` in [-1, 1], ``control`` ``(T, C, H, W)`` in [-1, 1], ``driver`` bool ``(T, H, W)``, and its
    ``meta``, ``source_indices`` and ``geometry`` (None where the batch has none)."""
    from interdyn.data import ShardDataModule
    from interdyn.data.clip_spec import PAPER_CLIP

    frames = {} if num_frames is None else {"num_frames": num_frames}
    data = ShardDataModule(
        test_shards=test_shards,
        clip=PAPER_CLIP.with_overrides(height=size, width=size, crop="center", window="start", **frames),
        batch_size=1,
        num_workers=0,
        persistent_workers=False,
        pin_memory=False,
    )
    data.setup("test")
    seen = 0
    for batch in data.test_dataloader():
        if limit is not None and seen >= limit:
            return
        batch = to_contract(batch)  # the loader ships uint8 frames and bool masks
        if "pixel_values" not in batch:
            continue
        seen += 1
        meta = batch["meta"][0] if isinstance(batch.get("meta"), list) else {}
        group = (meta or {}).get("group")
        yield {
            "key": batch["key"][0],
            "group": None if group is None else str(group),
            "variant": (meta or {}).get("variant"),
            "pixel_values": batch["pixel_values"][0],
            "control": batch["control"][0],
            "driver": batch["control"][0, :, 0] > 0,
            "meta": meta,
            "source_indices": batch["source_indices"][0].tolist() if "source_indices" in batch else None,
            "geometry": batch["geometry"][0].tolist() if "geometry" in batch else None,
        }


def grouped_clips(test_shards: str, size: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The clips of :func:`test_clips` that belong to a counterfactual group (those without one still count
    towards ``limit``)."""
    return (clip for clip in test_clips(test_shards, size, limit) if clip["group"] is not None)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """``(T, 3, H, W)`` in [-1, 1] -> its reconstruction by a temporal VAE, in [0, 1]: each frame encoded
    (posterior mode), the clip decoded together."""
    latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()
    decoded = vae.decode(latents, num_frames=video.shape[0]).sample
    return ((decoded.float() + 1) / 2).clamp(0, 1)


def vae_ceiling(svd: str, test_shards: str, size: int, limit: int | None = None) -> dict[str, Any]:
    """The counterfactual report (outside every driver, as :class:`~interdyn.callbacks.CounterfactualEvaluation`
    measures it) of the VAE's reconstructions of the first ``limit`` test clips; with the built-in
    world's clips also its version on the discs, under ``"objects"``.

    Args:
        svd: an SVD img2vid folder (its ``vae/`` is used).
        test_shards: the test split's shards (counterfactual groups).
        size: frame size (square, center crop), as the test runs use.
        limit: how many clips, in ``interdyn test``'s order (``None``: all).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    from interdyn.models.hub import load_component

    vae = load_component(AutoencoderKLTemporalDecoder, svd, subfolder="vae", what="the SVD's VAE", kind="svd")
    vae = vae.float().eval()
    kept = []
    for clip in grouped_clips(test_shards, size, limit):
        member = {
            "key": clip["key"],
            "group": clip["group"],
            "variant": clip["variant"],
            "generated": reconstruct(vae, clip["pixel_values"]),
            "ground_truth": (clip["pixel_values"] + 1) / 2,
            "driver": clip["driver"],
        }
        timing = clip["source_indices"], clip["geometry"]
        if has_simulation(clip["meta"], *timing):
            video = to_uint8(member["generated"].permute(0, 2, 3, 1)).numpy()
            member |= disc_positions(video[None], clip["meta"], *timing)
        kept.append(member)
    if not kept:
        raise InterDynError(f"no counterfactual group in {test_shards}")
    report = counterfactual_report(group_members(kept, outside_driver=True))
    if all("found" in m for m in kept):
        report["objects"] = object_report(group_object_members(kept))
    return report
