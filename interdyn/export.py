"""Control-branch weights from a Lightning checkpoint: reading them, and ``interdyn export``.

A checkpoint written by :class:`~interdyn.module.InterDynModule` holds the branch's weights under
``state_dict`` (keys prefixed ``controlnet.``), the branch's constructor arguments under
``interdyn_controlnet_config`` and the module's hyper-parameters (the SVD source and the sampling
settings). Reading it needs no Lightning: ``torch.load(weights_only=True)``, then
``ControlNetSDVModel(**config)`` loaded strictly.

``interdyn export`` writes the branch as a diffusers folder (``config.json`` with
``residual_addition: "single"`` + ``diffusion_pytorch_model.safetensors``) that
:func:`~interdyn.models.released.load_controlnet`, the pipeline and ``interdyn generate --controlnet``
load like any other branch:

    interdyn export --ckpt_path runs/x/version_0/checkpoints/last.ckpt --out my_controlnet/
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from interdyn.errors import InputError, InterDynError, WeightsMismatchError, WeightsNotFoundError
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.hub import SVD_REPO
from interdyn.models.released import load_controlnet

BRANCH_PREFIX = "controlnet."
CONFIG_KEY = "interdyn_controlnet_config"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Hyper-parameters of the module that are sampling settings (used as defaults by `interdyn generate`).
SAMPLING_HPARAMS = (
    "num_inference_steps",
    "min_guidance_scale",
    "max_guidance_scale",
    "fps_id",
    "motion_bucket_id",
    "noise_aug_strength",
    "conditioning_scale",
    "scheduler",
)


def is_checkpoint_path(source: str) -> bool:
    """True for sources that name a Lightning checkpoint file rather than a folder or hub id."""
    return str(source).endswith(".ckpt") or Path(source).expanduser().is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an interdyn Lightning checkpoint safely (tensors and plain values only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"the checkpoint '{path}' does not exist.")
    try:
        try:  # memory-mapped: the optimizer state of a large checkpoint is never read
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(
            f"cannot read the checkpoint '{path}' as a safe (weights-only) torch file ({reason})."
        ) from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise InputError(
            f"'{path}' is not a checkpoint of an interdyn training run (it has no '{CONFIG_KEY}' entry)."
        )
    return checkpoint


def branch_from_checkpoint(
    checkpoint: dict[str, Any], torch_dtype: torch.dtype = torch.float32, where: str = "the checkpoint"
) -> ControlNetSDVModel:
    """Build the branch recorded in a checkpoint read by :func:`read_checkpoint` and load its weights
    strictly (every tensor present, none left over, every shape equal)."""
    config = {k: v for k, v in checkpoint[CONFIG_KEY].items() if not str(k).startswith("_")}
    state = {
        k[len(BRANCH_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(BRANCH_PREFIX)
    }
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
            model = ControlNetSDVModel(**config)
    except (TypeError, ValueError) as err:
        raise WeightsMismatchError(f"the branch config in {where} is invalid ({err}).") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        raise WeightsMismatchError(
            f"the control branch in {where} does not match its recorded config (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, other shapes {reshaped[:4]})."
        )
    # Copies in the wanted dtype (off the memory map); assign=True makes them the parameters.
    tensors = {k: v.to(torch_dtype, copy=True) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def checkpoint_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The SVD source (``svd``) and sampling settings recorded in a checkpoint's hyper-parameters."""
    hparams = checkpoint.get("hyper_parameters") or {}
    settings = {k: hparams[k] for k in SAMPLING_HPARAMS if k in hparams}
    if "svd" in hparams:
        settings["svd"] = hparams["svd"]
    return settings


def load_branch(
    source: str, torch_dtype: torch.dtype = torch.float32
) -> tuple[ControlNetSDVModel, dict[str, Any]]:
    """A branch from a ``.ckpt`` (with the checkpoint's settings), or from a folder / hub id through
    :func:`load_controlnet` (released folders are converted; settings empty)."""
    if is_checkpoint_path(source):
        checkpoint = read_checkpoint(source)
        branch = branch_from_checkpoint(checkpoint, torch_dtype, where=f"'{source}'")
        return branch, checkpoint_settings(checkpoint)
    return load_controlnet(source, torch_dtype=torch_dtype).eval(), {}


def export_checkpoint(
    ckpt_path: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False
) -> Path:
    """Write the branch of ``ckpt_path`` as a diffusers folder at ``out`` and return its path.

    The folder appears complete or not at all: it is written next to ``out`` under a temporary name
    and renamed. An existing non-empty ``out`` is refused unless ``overwrite``.
    """
    _check_export_target(Path(out).expanduser(), dtype, overwrite)
    return _export(read_checkpoint(ckpt_path), str(ckpt_path), Path(out).expanduser(), dtype, overwrite)


def _check_export_target(out: Path, dtype: str, overwrite: bool) -> None:
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    if out.exists() and not out.is_dir():
        raise InputError(f"the output '{out}' exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"the output folder '{out}' is not empty; pass --overwrite to replace it.")


def _export(checkpoint: dict[str, Any], where: str, out: Path, dtype: str, overwrite: bool) -> Path:
    _check_export_target(out, dtype, overwrite)
    branch = branch_from_checkpoint(checkpoint, DTYPES[dtype], where=f"'{where}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        branch.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interdyn export",
        description="Export the control branch of an interdyn Lightning checkpoint as a diffusers folder "
        "(config.json + diffusion_pytorch_model.safetensors), for `interdyn generate --controlnet` and "
        "interdyn.models.load_controlnet.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by `interdyn fit`")
    parser.add_argument("--out", required=True, help="the folder to write (created)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the saved weights"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def export_main(argv: list[str]) -> int:
    """``interdyn export``: returns the exit code (2 with one sentence on stderr for user errors)."""
    args = build_export_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    try:
        _check_export_target(out, args.dtype, args.overwrite)  # before reading a large checkpoint
        checkpoint = read_checkpoint(args.ckpt_path)
        _export(checkpoint, args.ckpt_path, out, args.dtype, args.overwrite)
        settings = checkpoint_settings(checkpoint)
    except InterDynError as err:
        print(f"interdyn export: error: {err}", file=sys.stderr)
        return 2
    for path in sorted(out.iterdir()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    svd = settings.get("svd", SVD_REPO)
    svd_arg = f" --svd {svd}" if isinstance(svd, str) and svd != SVD_REPO else ""
    print(f"use it with: interdyn generate --controlnet {out}{svd_arg} --image <image> --control <masks>")
    if isinstance(svd, dict):
        print(
            "(the checkpoint was trained on an SVD given as an architecture dict: pass the same with --svd)"
        )
    sampling = {k: v for k, v in settings.items() if k != "svd"}
    if sampling:
        print(
            "sampling settings recorded in the checkpoint: "
            + ", ".join(f"{k}={v}" for k, v in sampling.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
