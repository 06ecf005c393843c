"""``interdyn export``: the control branch of a Lightning checkpoint (read by
:mod:`interdyn.branch_checkpoint`) as a diffusers folder.

``interdyn export`` writes the branch as a diffusers folder (``config.json`` with
``residual_addition: "single"`` + ``diffusion_pytorch_model.safetensors``) that
:func:`~interdyn.models.released.load_controlnet`, the pipeline and ``interdyn generate --controlnet``
load like any other branch:

    interdyn export --ckpt_path runs/x/version_0/checkpoints/last.ckpt --out my_controlnet/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from interdyn.branch_checkpoint import (
    DTYPES,
    WEIGHTS,
    branch_from_checkpoint,
    checkpoint_settings,
    has_ema,
    read_checkpoint,
)
from interdyn.commands import call_with, command_parser, run_command
from interdyn.errors import InputError
from interdyn.files import write_folder_atomic
from interdyn.models.hub import SVD_REPO


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    weights: str = "ema",
) -> Path:
    """Write the branch of ``ckpt_path`` as a diffusers folder at ``out`` and return its path: the moving
    average of its weights when the run kept one (``ema_decay``) and ``weights`` is ``"ema"``, else the
    last step's.

    The folder appears complete or not at all: it is written next to ``out`` under a temporary name
    and renamed. An existing non-empty ``out`` is refused unless ``overwrite``.
    """
    _check_export_target(Path(out).expanduser(), dtype, overwrite, weights)
    return _export(
        read_checkpoint(ckpt_path), str(ckpt_path), Path(out).expanduser(), dtype, overwrite, weights
    )


def _check_export_target(out: Path, dtype: str, overwrite: bool, weights: str = "ema") -> None:
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    if weights not in WEIGHTS:
        raise InputError(f"--weights must be one of {', '.join(WEIGHTS)}, got '{weights}'.")
    if out.exists() and not out.is_dir():
        raise InputError(f"the output '{out}' exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"the output folder '{out}' is not empty; pass --overwrite to replace it.")


def _export(
    checkpoint: dict[str, Any], where: str, out: Path, dtype: str, overwrite: bool, weights: str = "ema"
) -> Path:
    _check_export_target(out, dtype, overwrite, weights)
    branch = branch_from_checkpoint(checkpoint, DTYPES[dtype], where=f"'{where}'", weights=weights)
    return write_folder_atomic(out, lambda folder: branch.save_pretrained(folder, safe_serialization=True))


def export_command(
    ckpt_path: str, out: str, dtype: str = "float32", overwrite: bool = False, weights: str = "ema"
) -> Path:
    """Export the control branch of an interdyn Lightning checkpoint as a diffusers folder (config.json +
    diffusion_pytorch_model.safetensors), for `interdyn generate --controlnet` and
    interdyn.models.load_controlnet.

    Args:
        ckpt_path: a .ckpt written by `interdyn fit`
        out: the folder to write (created)
        dtype: dtype of the saved weights: float32, float16 or bfloat16
        overwrite: replace a non-empty --out folder
        weights: for a run trained with model.ema_decay: ema (the moving average of the weights) or live
            (the last step's); a run without an average has only the last step's
    """
    target = Path(out).expanduser()
    _check_export_target(target, dtype, overwrite, weights)  # before reading a large checkpoint
    checkpoint = read_checkpoint(ckpt_path)
    _export(checkpoint, ckpt_path, target, dtype, overwrite, weights)
    which = (
        "the moving average of the weights"
        if weights == "ema" and has_ema(checkpoint)
        else "the last step's weights"
    )
    print(f"exported {which} of the branch")
    settings = checkpoint_settings(checkpoint)
    for path in sorted(target.iterdir()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    svd = settings.get("svd", SVD_REPO)
    svd_arg = f" --svd {svd}" if isinstance(svd, str) and svd != SVD_REPO else ""
    print(f"use it with: interdyn generate --controlnet {target}{svd_arg} --image <image> --control <masks>")
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
    return target


def export_main(argv: list[str]) -> int:
    """``interdyn export``: returns the exit code (2 with one sentence on stderr for user errors)."""
    parser = command_parser(export_command, "interdyn export")
    return run_command("interdyn export", parser, lambda args: call_with(export_command, args), argv)


if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
