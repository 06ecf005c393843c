"""Which backbone a set of weights belongs to, and the Wan control branch as ``interdyn generate``,
``interdyn export`` and the app read and write it.

An exported Wan branch is a folder holding the branch in diffusers format (``config.json`` naming
``WanControlNetModel`` + ``diffusion_pytorch_model.safetensors``, as ``save_pretrained`` writes it) and
``interdyn_base.json``: the Wan2.2 TI2V base it was trained on (a folder, hub id, preset or architecture
dict), and what else its training run recorded (the prompt embedding, the clip, sampling settings), so
that ``interdyn generate --controlnet <folder>`` needs no other option.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser

from interdyn.errors import InputError, InterDynError, WeightsMismatchError
from interdyn.models.hub import load_component, looks_like_local_path, resolve_local_path
from interdyn.models.wan import WanComponents, WanControlNetModel
from interdyn.models.wan.components import WAN_PRESETS, WAN_TI2V_REPO
from interdyn.training.checkpoint import (
    branch_from_checkpoint,
    is_checkpoint_path,
    read_checkpoint,
)
from interdyn.training.wan_module import BACKBONE_KEY, WAN_BACKBONE
from interdyn.utils.files import write_folder_atomic

BASE_FILE = "interdyn_base.json"
WAN_BRANCH_CLASS = "WanControlNetModel"
WAN_HUB_OWNER = "Wan-AI/"  # hub ids of the Wan models (checked without the network)
# What a Wan branch must share with the transformer it runs beside (its config name -> the transformer's).
_MATCHING = {
    "num_transformer_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "attention_head_dim": "attention_head_dim",
    "in_channels": "in_channels",
    "ffn_dim": "ffn_dim",
    "patch_size": "patch_size",
}


@dataclass
class BackboneOptions:
    """The options of ``interdyn generate`` that choose the video model (added to its parser by
    :func:`add_backbone_options`).

    Args:
        backbone: auto (wan when --wan is given, --svd names a Wan folder or --controlnet a Wan branch;
            else svd), svd or wan
        wan: the Wan2.2 TI2V base: a diffusers folder or hub id, or random:wan-tiny (default: the one an
            exported Wan branch names, else Wan-AI/Wan2.2-TI2V-5B-Diffusers)
        prompt_embeds: Wan only: the fixed prompt embedding, a .safetensors written by interdyn prompt
            (default: the one the branch was trained with, else zeros)
        guidance_scale: Wan only: prompt guidance, each step moved away from the negative prompt embedding
            by this factor; 1: none (default: the branch's recorded setting, else 1)
        negative_prompt_embeds: Wan only: the negative prompt embedding of --guidance_scale above 1, a
            .safetensors written by interdyn prompt (default: the one the branch's run named)
        window_frames: Wan only: the frames of one window of a long video sampled with --continuation hold
            or chain (1 + 4k; default 49, the clip of configs/wan_ssv2.yaml)
    """

    backbone: Literal["auto", "svd", "wan"] = "auto"
    wan: str | None = None
    prompt_embeds: str | None = None
    guidance_scale: float | None = None
    negative_prompt_embeds: str | None = None
    window_frames: int | None = None


# The options of BackboneOptions that only the Wan backbone takes.
WAN_ONLY = ("prompt_embeds", "guidance_scale", "negative_prompt_embeds", "window_frames")


def add_backbone_options(parser: ArgumentParser) -> None:
    """The options of :class:`BackboneOptions`: ``--backbone``, ``--wan`` and the Wan prompt's."""
    parser.add_class_arguments(BackboneOptions, as_group=False, fail_untyped=True)


def backbone_of(args: Any) -> str:
    """``svd`` or ``wan``: ``--backbone``, or for ``auto`` what the weights named are."""
    choice, wan = getattr(args, "backbone", "auto"), getattr(args, "wan", None)
    if choice == "svd" and wan is not None:
        raise InputError("--wan names a Wan2.2 base, but --backbone is svd; leave one of them out.")
    if choice == "svd" and is_wan_branch(args.controlnet):
        raise InputError(
            f"--controlnet '{args.controlnet}' is a Wan branch, but --backbone is svd; leave it auto."
        )
    found = choice if choice != "auto" else "wan" if wan is not None else None
    if found is None:
        found = "wan" if is_wan_base(args.svd) or is_wan_branch(args.controlnet) else "svd"
    given = [name for name in WAN_ONLY if getattr(args, name, None) is not None]
    if found == "svd" and given:
        why = {
            "guidance_scale": "SVD takes no text (its guidance is --min_guidance_scale and --max_guidance_scale)",
            "window_frames": "SVD's window is its UNet's frame count",
        }.get(given[0], "SVD takes no text")
        raise InputError(f"--{given[0]} is for the Wan backbone; {why} (name a Wan base with --wan).")
    return found


def _json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when there is none (missing, unreadable, not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _local(source: Any) -> Path | None:
    """``source`` as an existing local path, else None (hub ids, presets, dicts)."""
    if not isinstance(source, str) or not source or not looks_like_local_path(source):
        return None
    path = Path(resolve_local_path(source))
    return path if path.exists() else None


def is_wan_base(source: Any) -> bool:
    """True for a Wan2.2 TI2V base: a preset (``random:wan-tiny``), an architecture dict of Wan parts, a
    hub id of ``Wan-AI``, or a local diffusers folder whose ``model_index.json`` names a Wan pipeline or
    whose ``transformer/config.json`` names ``WanTransformer3DModel``."""
    if isinstance(source, dict):
        return "transformer" in source and "unet" not in source
    if not isinstance(source, str):
        return False
    if source in WAN_PRESETS or source.startswith(WAN_HUB_OWNER):
        return True
    folder = _local(source)
    if folder is None or not folder.is_dir():
        return False
    index = _json(folder / "model_index.json").get("_class_name", "")
    transformer = _json(folder / "transformer" / "config.json").get("_class_name", "")
    return str(index).startswith("Wan") or transformer == "WanTransformer3DModel"


def is_wan_branch(source: Any) -> bool:
    """True for a local folder holding a Wan branch (its ``config.json`` names ``WanControlNetModel``) or
    a checkpoint of a Wan training run; a checkpoint that cannot be read is not (the SVD path says why)."""
    path = _local(source)
    if path is None:
        return False
    if path.is_dir():
        return _json(path / "config.json").get("_class_name") == WAN_BRANCH_CLASS
    try:
        return is_wan_checkpoint(read_checkpoint(path))
    except InterDynError:
        return False


def is_wan_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """True for a checkpoint of :class:`~interdyn.training.wan_module.InterDynWanModule`."""
    return checkpoint.get(BACKBONE_KEY) == WAN_BACKBONE


def wan_branch_from_checkpoint(
    checkpoint: dict[str, Any],
    torch_dtype: torch.dtype = torch.float32,
    where: str = "the checkpoint",
    weights: str = "ema",
) -> tuple[WanControlNetModel, dict[str, Any]]:
    """The Wan branch of a Wan training run's checkpoint (loaded strictly: the moving average of its weights
    when the run kept one and ``weights`` is ``"ema"``, else the last step's), and what the run recorded for
    sampling with it: its base, prompt embeddings and sampling settings (``interdyn_base.json``'s fields)."""
    branch = branch_from_checkpoint(checkpoint, torch_dtype, where, weights, WanControlNetModel)
    hparams = checkpoint.get("hyper_parameters") or {}
    prompt, negative = hparams.get("prompt_embeds"), hparams.get("negative_prompt_embeds")
    record = {
        "base": recorded_base(hparams.get("wan", WAN_TI2V_REPO)),
        "prompt_embeds": recorded_base(prompt) if prompt else None,
        "negative_prompt_embeds": recorded_base(negative) if negative else None,
        "sampling": dict(hparams.get("sampling") or {}),
    }
    return branch, record


def branch_record(folder: str | Path) -> dict[str, Any]:
    """The ``interdyn_base.json`` of an exported Wan branch (``{}`` for a folder without one)."""
    local = _local(str(folder))
    return _json(local / BASE_FILE) if local is not None else {}


def recorded_base(base: Any) -> Any:
    """How a base is written into ``interdyn_base.json``: a local folder as an absolute path (the export
    may be read from another working directory), anything else as it is."""
    local = _local(base)
    return str(local.resolve()) if local is not None else base


def load_wan_branch(
    source: str, torch_dtype: torch.dtype = torch.float32, weights: str = "ema"
) -> tuple[WanControlNetModel, dict[str, Any]]:
    """A Wan branch from a folder (``save_pretrained``'s, or an export) and what its ``interdyn_base.json``
    records (``{}`` without one), or from a Wan run's ``.ckpt`` (its moving average when it kept one and
    ``weights`` is ``"ema"``) and what the run recorded; missing or mismatched weights are one sentence."""
    if is_checkpoint_path(source):
        checkpoint = read_checkpoint(source)
        if not is_wan_checkpoint(checkpoint):
            raise WeightsMismatchError(
                f"'{source}' is a checkpoint of an SVD run; the Wan backbone needs a Wan branch (--backbone svd, "
                "or a Wan run's checkpoint)."
            )
        return wan_branch_from_checkpoint(checkpoint, torch_dtype, f"'{source}'", weights)
    folder = _local(source)
    found = _json(folder / "config.json").get("_class_name") if folder is not None else None
    if found is not None and found != WAN_BRANCH_CLASS:
        raise WeightsMismatchError(
            f"'{source}' holds a {found}, not a Wan branch ({WAN_BRANCH_CLASS}); pair it with its own backbone "
            "(--backbone svd), or name a Wan branch with --controlnet."
        )
    try:
        branch = load_component(
            WanControlNetModel, source, what="Wan control branch", kind="controlnet", torch_dtype=torch_dtype
        )
    except (TypeError, ValueError) as err:  # a config this class cannot be built from
        raise WeightsMismatchError(f"the Wan branch at '{source}' has an invalid config ({err}).") from None
    return branch.eval(), branch_record(source)


def check_wan_compatible(branch: WanControlNetModel, wan: WanComponents) -> None:
    """The branch must have been made from a transformer of this architecture, for this VAE."""

    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, list | tuple) else value

    for ours, theirs in _MATCHING.items():
        a, b = norm(branch.config.get(ours)), norm(wan.transformer.config.get(theirs))
        if a != b:
            raise WeightsMismatchError(
                f"the Wan branch does not fit this Wan transformer: {ours} is {a} in the branch and {b} in the "
                "transformer (pair the branch with the base it was trained on, --wan)."
            )
    vae = (wan.vae.config.scale_factor_spatial, wan.vae.config.scale_factor_temporal)
    if (branch.config.vae_scale_factor_spatial, branch.config.vae_scale_factor_temporal) != vae:
        raise WeightsMismatchError(
            "the Wan branch's mask encoder was built for another VAE compression than this base's (x"
            f"{vae[1]} frames, x{vae[0]} pixels); pair the branch with the base it was trained on (--wan)."
        )


def save_wan_branch(
    branch: WanControlNetModel, out: Path, base: Any, record: dict[str, Any] | None = None
) -> Path:
    """Write ``branch`` and its ``interdyn_base.json`` (``base`` and ``record``) into ``out``, which appears
    complete or not at all."""
    meta = {"backbone": "wan", **(record or {}), "base": recorded_base(base)}

    def write(folder: Path) -> None:
        branch.save_pretrained(folder, safe_serialization=True)
        (folder / BASE_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    return write_folder_atomic(out, write)
