"""Where a model loses what its control says: the counterfactual accuracy of its one-step predictions,
noise level by noise level.

Each test clip's latents are noised to a level sigma (the same noise for every member of a group, so the
members differ only by their truth and their control) and the model (branch + UNet, or the UNet alone)
predicts the clean clip in one step. Those predictions, decoded, are scored like samples by the
counterfactual test (outside every driver's mask). At low noise the noisy truth itself tells the paths
apart and every model scores near 1; at high noise the prediction is the model's own idea of what follows
from the first frame and the control. The built-in world is deterministic (a first frame and a driver
path fix the outcome), so a perfect model would score 1 at every level there: where the accuracy falls
is where the model's dynamics are missing. The SVD without control is the reference that loses
everything at high noise (its predictions for the members of a group are then the same video).

A research tool of the world's experiments (experiments/world/README.md, "The one-step probe"), run
from the repository root:

    python -m experiments.world.onestep --svd weights/world/svd --controlnet weights/world/branch \\
        --out runs/onestep/branch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder

from interdyn.commands.parsers import run_command
from interdyn.errors import InterDynError
from interdyn.metrics.counterfactual import (
    counterfactual_report,
    group_members,
    group_object_members,
    object_report,
)
from interdyn.metrics.physics import disc_positions, has_simulation
from interdyn.models.conditioning import (
    clip_image_embeds,
    decode_latents,
    encode_image_latents,
    encode_video_posterior,
    make_added_time_ids,
)
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.edm import denoised, unet_input
from interdyn.models.sampling import DEFAULT_SAMPLING
from interdyn.models.svd import SVDComponents
from interdyn.training.checkpoint import WEIGHTS
from interdyn.utils.files import write_atomic
from interdyn.utils.render import to_uint8

DEFAULT_SIGMAS: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0, 20.0, 50.0)
# the overall fields of the counterfactual report that the table shows
FIELDS: tuple[str, ...] = ("accuracy", "pairwise_accuracy", "motion_ratio", "spread_ratio")


@torch.no_grad()
def onestep_videos(
    svd: SVDComponents,
    controlnet: ControlNetSDVModel | None,
    pixel_values: torch.Tensor,
    control: torch.Tensor,
    sigma: float,
    noise: torch.Tensor,
    image_noise: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """One-step predictions of clean clips from their latents noised to ``sigma``.

    Args:
        svd: the SVD parts (UNet, VAE, CLIP image encoder).
        controlnet: the branch; ``None`` for the UNet alone.
        pixel_values: ``(B, T, 3, H, W)`` in ``[-1, 1]``.
        control: ``(B, T, C, H, W)`` in ``[-1, 1]``.
        sigma: the noise level of the scaled latents.
        noise: unit noise ``(B, T, 4, H/f, W/f)`` (share it within a group to compare its members).
        image_noise: the conditioning image's noise augmentation ``(B, 3, H, W)`` (unit; scaled by SVD's
            ``noise_aug_strength``); ``None`` for none.
        conditioning_scale: multiplies the branch residuals.

    Returns:
        the decoded predictions ``(B, T, 3, H, W)`` in ``[0, 1]``.
    """
    vae, unet = svd.vae, svd.unet
    b = pixel_values.shape[0]
    mean, _ = encode_video_posterior(vae, pixel_values)
    latents = mean.float() * vae.config.scaling_factor  # the posterior mean: no draw, the same every run
    first = pixel_values[:, 0]
    if image_noise is not None:
        first = first + DEFAULT_SAMPLING.noise_aug_strength * image_noise
    image_latents = encode_image_latents(vae, first, 0.0).float()
    embeds = clip_image_embeds(svd.image_encoder, pixel_values[:, 0]).float()
    time_ids = make_added_time_ids(
        DEFAULT_SAMPLING.fps_id,
        DEFAULT_SAMPLING.motion_bucket_id,
        DEFAULT_SAMPLING.noise_aug_strength,
        b,
        latents.device,
        torch.float32,
    )
    sigmas = torch.full((b,), float(sigma), device=latents.device)
    noisy = latents + sigma * noise.to(latents)
    pc, model_in, c_noise = unet_input(noisy, sigmas, image_latents)
    residuals: dict[str, Any] = {}
    if controlnet is not None:
        down, mid = controlnet(
            model_in,
            c_noise,
            embeds,
            time_ids,
            control,
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    out = unet(model_in, c_noise, embeds, time_ids, return_dict=False, **residuals)[0].float()
    return (decode_latents(vae, denoised(pc, noisy, out)) + 1) / 2


def _latent_shape(vae: AutoencoderKLTemporalDecoder, frames: int, height: int, width: int) -> tuple[int, ...]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise InterDynError(f"frames of {height}x{width} do not divide by the VAE's downsampling ({factor})")
    return (frames, vae.config.latent_channels, height // factor, width // factor)


def onestep_counterfactual(
    svd: SVDComponents,
    controlnet: ControlNetSDVModel | None,
    clips: Sequence[dict[str, Any]],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    seed: int = 0,
    batch_size: int = 6,
    conditioning_scale: float = 1.0,
) -> dict[str, Any]:
    """The counterfactual report of the one-step predictions at each noise level.

    Args:
        svd, controlnet, conditioning_scale: as in :func:`onestep_videos`.
        clips: test clips as :func:`~interdyn.world.ceiling.grouped_clips` yields them (``key``, ``group``,
            ``pixel_values``, ``control``, ``driver``).
        sigmas: the noise levels.
        seed: seeds the noise; every member of a group gets the same noise (and image noise), and every
            level the same unit noise.
        batch_size: clips per model call.

    Returns:
        ``{"sigmas": [...], "reports": {str(sigma): counterfactual report}, "protocol": {...}}``.
    """
    if not clips:
        raise InterDynError("no test clips to probe")
    if not sigmas or any(not s > 0 for s in sigmas):
        raise InterDynError(f"noise levels must be positive, got {list(sigmas)}")
    t, _, h, w = clips[0]["pixel_values"].shape
    noise, image_noise, groups = _group_noise(clips, _latent_shape(svd.vae, t, h, w), seed)
    pixels = torch.stack([c["pixel_values"] for c in clips])
    control = torch.stack([c["control"] for c in clips])
    reports: dict[str, Any] = {}
    for sigma in sigmas:
        videos = torch.cat(
            [
                onestep_videos(
                    svd,
                    controlnet,
                    pixels[i : i + batch_size],
                    control[i : i + batch_size],
                    sigma,
                    noise[i : i + batch_size],
                    image_noise[i : i + batch_size],
                    conditioning_scale,
                )
                for i in range(0, len(clips), batch_size)
            ]
        )
        reports[_key(sigma)] = _score(clips, videos)
    protocol = {
        "clips": len(clips),
        "groups": groups,
        "seed": seed,
        "region": "outside_driver",
        "latents": "VAE posterior mean",
        "conditioning_scale": conditioning_scale if controlnet is not None else 0.0,
    }
    return {"sigmas": [float(s) for s in sigmas], "reports": reports, "protocol": protocol}


def _group_noise(
    clips: Sequence[dict[str, Any]], shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per clip, its group's latent noise of ``shape`` and image noise (every member of a group gets the
    same, drawn in the order the groups first appear), and the number of groups."""
    h, w = clips[0]["pixel_values"].shape[-2:]
    generator = torch.Generator().manual_seed(seed)
    per_group: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for clip in clips:
        if clip["group"] not in per_group:
            per_group[clip["group"]] = (
                torch.randn(shape, generator=generator),
                torch.randn((3, h, w), generator=generator),
            )
    noise = torch.stack([per_group[c["group"]][0] for c in clips])
    image_noise = torch.stack([per_group[c["group"]][1] for c in clips])
    return noise, image_noise, len(per_group)


def _score(clips: Sequence[dict[str, Any]], videos: torch.Tensor) -> dict[str, Any]:
    """The counterfactual report of one noise level's predictions ``videos`` (one per clip), outside the
    drivers, with the accuracy per variant; in the built-in world also on the discs."""
    members = [
        {**clip, "generated": video, "ground_truth": (clip["pixel_values"] + 1) / 2}
        for clip, video in zip(clips, videos, strict=True)
    ]
    report = counterfactual_report(group_members(members, outside_driver=True))
    report["accuracy_by_variant"] = accuracy_by_variant(report["pairs"], clips)
    if all(
        has_simulation(c["meta"], c["source_indices"], c["geometry"]) for c in clips
    ):  # the built-in world: also on the discs
        for member in members:
            frames = to_uint8(member["generated"].permute(0, 2, 3, 1)).numpy()[None]
            member |= disc_positions(frames, member["meta"], member["source_indices"], member["geometry"])
        report["objects"] = object_report(group_object_members(members))
    return report


def accuracy_by_variant(pairs: Sequence[dict[str, Any]], clips: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The fraction of a group's ``v<k>`` members that are nearer their own truth than every other
    member's (all their pairs right), per variant ``k``: on the ``seen`` split of
    ``data_prep.synthetic --seen_groups`` member ``v0`` is a training clip and the others are not."""
    variant = {c["key"]: c.get("variant") for c in clips}
    right: dict[str, dict[str, bool]] = {}
    for pair in pairs:
        k = variant.get(pair["member"])
        if k is None or math.isnan(pair["correct"]):
            continue
        member = right.setdefault(f"v{k}", {})
        member[pair["member"]] = member.get(pair["member"], True) and pair["correct"] == 1.0
    return {k: sum(v.values()) / len(v) for k, v in sorted(right.items())}


def _key(sigma: float) -> str:
    return f"{float(sigma):g}"


def to_markdown(result: dict[str, Any], name: str = "model") -> str:
    """One row per noise level: accuracy, pairwise accuracy, motion and spread ratios, how many of the
    wrong answers chose the truth that moves less, and (on the built-in world) the accuracy on the discs."""
    head = (
        "| sigma | "
        + " | ".join(f.replace("_", " ") for f in FIELDS)
        + " | wrong toward stiller | accuracy on the discs |"
    )
    lines = [f"One-step predictions of {name} ({result['protocol']['clips']} clips)", "", head]
    lines.append("|---" * (len(FIELDS) + 3) + "|")
    for sigma in result["sigmas"]:
        report = result["reports"][_key(sigma)]
        overall = report["overall"]
        cells = []
        for field in FIELDS:
            value = overall.get(field)
            cells.append(f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-")
        toward = report.get("errors_toward_stiller", {})
        wrong = int(toward.get("wrong", 0))
        stiller = f"{int(toward.get('toward_stiller', 0))} of {wrong}" if wrong else "-"
        discs = report.get("objects", {}).get("overall", {}).get("accuracy", math.nan)
        discs_cell = f"{discs:.3f}" if math.isfinite(discs) else "-"
        lines.append(f"| {sigma:g} | " + " | ".join(cells) + f" | {stiller} | {discs_cell} |")
    variants = sorted(
        {k for s in result["sigmas"] for k in result["reports"][_key(s)].get("accuracy_by_variant", {})}
    )
    if len(variants) > 1:
        lines += [
            "",
            "Accuracy by group member (on a `seen` split, v0 is a training clip; on the test split, none is):",
            "",
        ]
        lines += ["| sigma | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for sigma in result["sigmas"]:
            by = result["reports"][_key(sigma)].get("accuracy_by_variant", {})
            cells = [f"{by[k]:.3f}" if k in by else "-" for k in variants]
            lines.append(f"| {sigma:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sigmas(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--svd", default="weights/world/svd", help="the SVD img2vid folder")
    parser.add_argument(
        "--controlnet", default=None, help="the branch (a folder or .ckpt); leave out for the SVD alone"
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="ema",
        help="for a .ckpt of a run with model.ema_decay: the moving average (default) or the last step's weights",
    )
    parser.add_argument("--test_shards", default="data/shards/world/test/*.tar")
    parser.add_argument("--size", type=int, default=64, help="frame size (square, center crop)")
    parser.add_argument("--sigmas", type=_sigmas, default=list(DEFAULT_SIGMAS), help="e.g. 0.5,2,5,10,20,50")
    parser.add_argument("--limit", type=int, default=None, help="the first N test clips (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=6)
    parser.add_argument("--conditioning_scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True, help="writes onestep.md and onestep.json here")
    return run_command("python -m experiments.world.onestep", parser, _run, argv)


def _run(args: argparse.Namespace) -> None:
    from interdyn.models.svd import get_svd
    from interdyn.training.checkpoint import is_checkpoint_path, load_branch
    from interdyn.world.ceiling import grouped_clips

    svd = get_svd(args.svd)
    for part in (svd.unet, svd.vae, svd.image_encoder):
        part.float().eval()
    controlnet = None
    if args.controlnet:
        controlnet = load_branch(args.controlnet, weights=args.weights)[0].float().eval()
    clips = list(grouped_clips(args.test_shards, args.size, args.limit))
    result = onestep_counterfactual(
        svd,
        controlnet,
        clips,
        args.sigmas,
        seed=args.seed,
        batch_size=args.batch_size,
        conditioning_scale=args.conditioning_scale,
    )
    name = args.controlnet or f"{args.svd} without control"
    if args.controlnet and args.weights == "live" and is_checkpoint_path(args.controlnet):
        name += " (last step's weights)"
    text = to_markdown(result, name)
    write_atomic(args.out / "onestep.md", text)
    write_atomic(args.out / "onestep.json", json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
