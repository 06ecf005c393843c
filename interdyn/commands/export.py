"""``interdyn export``: the control branch of a Lightning checkpoint (read by
:mod:`interdyn.training.checkpoint`) as a diffusers folder.

``interdyn export`` writes the branch as a diffusers folder (``config.json`` with
``residual_addition: "single"`` + ``diffusion_pytorch_model.safetensors``) that
:func:`~interdyn.models.released.load_controlnet`, the pipeline and ``interdyn generate --controlnet``
load like any other branch:

    interdyn export --ckpt_path runs/x/version_0/checkpoints/last.ckpt --out my_controlnet/

A Wan branch (a Wan training run's ``.ckpt``, or a ``WanControlNetModel`` folder with ``--wan``) is written
with ``interdyn_base.json`` naming its base (:mod:`interdyn.commands.backbone`):

    interdyn export --ckpt_path my_branch/ --wan checkpoints/wan2.2-ti2v-5b --out my_wan_branch/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from interdyn.commands.backbone import (
    BASE_FILE,
    is_wan_branch,
    is_wan_checkpoint,
    load_wan_branch,
    save_wan_branch,
    wan_branch_from_checkpoint,
)
from interdyn.commands.parsers import call_with, command_parser, run_command
from interdyn.errors import InputError
from interdyn.models.hub import SVD_REPO
from interdyn.training.checkpoint import (
    WEIGHTS,
    branch_from_checkpoint,
    checkpoint_settings,
    has_ema,
    read_checkpoint,
)
from interdyn.training.settings import DTYPES
from interdyn.utils.files import unwritable_reason, write_folder_atomic


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
    target = _check_export_target(out, dtype, overwrite, weights, ckpt_path)
    return _export(read_checkpoint(ckpt_path), str(ckpt_path), target, dtype, overwrite, weights)


def _is_export_file(path: Path) -> bool:
    """A file that ``save_pretrained`` writes into a branch folder (weights, their index, the config)."""
    names = ("config.json", BASE_FILE)
    return path.is_file() and (path.name in names or path.name.startswith("diffusion_pytorch_model"))


def _check_export_target(
    out: str | Path, dtype: str, overwrite: bool, weights: str = "ema", ckpt_path: str | Path | None = None
) -> Path:
    """The folder to write, as an absolute path, once it is safe to (re)place: a new or empty folder, or
    with ``overwrite`` an earlier export; never a folder that holds the checkpoint or other files, nor
    one that cannot be written."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'.")
    if weights not in WEIGHTS:
        raise InputError(f"--weights must be one of {', '.join(WEIGHTS)}, got '{weights}'.")
    given, target = out, Path(out).expanduser().resolve()  # '.' and '..' get a name to write beside
    if target == target.parent:
        raise InputError(f"--out '{given}' is the root of the file system; name a folder to write.")
    local = ckpt_path is not None and "://" not in str(ckpt_path)  # not a URL or fsspec path
    ckpt = Path(str(ckpt_path)).expanduser().resolve() if local else None
    if ckpt is not None and ckpt.is_relative_to(target):
        raise InputError(
            f"--out '{given}' holds the checkpoint '{ckpt_path}' being exported; write the branch to "
            "another folder."
        )
    reason = unwritable_reason(target) or unwritable_reason(target.parent)
    if reason is not None:
        raise InputError(f"--out '{given}' cannot be written: {reason}.")
    held = sorted(target.iterdir()) if target.is_dir() else []
    if held and not overwrite:
        raise InputError(f"the output folder '{given}' is not empty; pass --overwrite to replace it.")
    others = [p.name for p in held if not _is_export_file(p)]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise InputError(
            f"the output folder '{given}' holds files that are not an exported branch ({shown}); "
            "--overwrite only replaces an earlier export, so write to a new or empty folder."
        )
    return target


def _export(
    checkpoint: dict[str, Any], where: str, out: Path, dtype: str, overwrite: bool, weights: str = "ema"
) -> Path:
    out = _check_export_target(out, dtype, overwrite, weights)
    branch = branch_from_checkpoint(checkpoint, DTYPES[dtype], where=f"'{where}'", weights=weights)
    return write_folder_atomic(out, lambda folder: branch.save_pretrained(folder, safe_serialization=True))


def _which_weights(checkpoint: dict[str, Any], weights: str) -> str:
    """Which of a checkpoint's branch weights an export with ``weights`` writes, in words."""
    if weights == "ema" and has_ema(checkpoint):
        return "the moving average of the weights"
    return "the last step's weights"


def export_wan(
    source: str,
    out: Path,
    dtype: str,
    wan: str | None,
    checkpoint: dict[str, Any] | None = None,
    weights: str = "ema",
) -> Path:
    """Write the Wan branch of a Wan run's ``checkpoint`` (read from ``source``; its moving average when it
    kept one and ``weights`` is ``"ema"``), or of the folder ``source`` (``save_pretrained``'s, or an earlier
    export), with the base it belongs to: ``wan``, else the one the checkpoint or folder records."""
    if checkpoint is not None:
        branch, record = wan_branch_from_checkpoint(checkpoint, DTYPES[dtype], f"'{source}'", weights)
    else:
        branch, record = load_wan_branch(source, DTYPES[dtype])
    base = wan if wan is not None else record.get("base")
    if base is None:
        raise InputError(
            f"'{source}' holds a Wan branch but does not say which base it was trained on; name it with --wan."
        )
    save_wan_branch(branch, out, base, record)
    if checkpoint is not None:
        print(f"exported {_which_weights(checkpoint, weights)} of the branch")
    _print_files(out)
    print(f"use it with: interdyn generate --controlnet {out} --image <image> --control <masks>")
    return out


def export_command(
    ckpt_path: str,
    out: str,
    dtype: str = "float32",
    overwrite: bool = False,
    weights: str = "ema",
    wan: str | None = None,
) -> Path:
    """Export the control branch of an interdyn Lightning checkpoint as a diffusers folder (config.json +
    diffusion_pytorch_model.safetensors), for `interdyn generate --controlnet` and
    interdyn.models.load_controlnet; a Wan branch also gets interdyn_base.json, naming its base.

    Args:
        ckpt_path: a .ckpt written by `interdyn fit`, or a folder holding a Wan branch (WanControlNetModel)
        out: the folder to write (created)
        dtype: dtype of the saved weights: float32, float16 or bfloat16
        overwrite: replace a non-empty --out folder
        weights: for a run trained with model.ema_decay: ema (the moving average of the weights) or live
            (the last step's); a run without an average has only the last step's
        wan: the Wan2.2 TI2V base a Wan branch belongs to (default: the one its checkpoint or folder
            records)
    """
    target = _check_export_target(
        out, dtype, overwrite, weights, ckpt_path
    )  # before reading a large checkpoint
    if is_wan_branch(ckpt_path) and Path(ckpt_path).expanduser().is_dir():
        return export_wan(ckpt_path, target, dtype, wan)
    checkpoint = read_checkpoint(ckpt_path)
    if is_wan_checkpoint(checkpoint):
        return export_wan(ckpt_path, target, dtype, wan, checkpoint, weights)
    _export(checkpoint, ckpt_path, target, dtype, overwrite, weights)
    print(f"exported {_which_weights(checkpoint, weights)} of the branch")
    settings = checkpoint_settings(checkpoint)
    _print_files(target)
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


def _print_files(folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def export_main(argv: list[str]) -> int:
    """``interdyn export``: returns the exit code (2 with one sentence on stderr for user errors)."""
    parser = command_parser(export_command, "interdyn export")
    return run_command("interdyn export", parser, lambda args: call_with(export_command, args), argv)


if __name__ == "__main__":
    sys.exit(export_main(sys.argv[1:]))
