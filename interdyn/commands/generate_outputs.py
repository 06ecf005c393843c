"""The files ``interdyn generate`` writes into ``--out``, named before any work is done.

Per control sequence, one mp4 per sample; then a labelled comparison video (a grid in counterfactual
mode), a contact sheet and the run's settings. :func:`check_outputs` refuses, before sampling, an
``--out`` that cannot be written, outputs that already exist (unless ``--overwrite``) and, always,
an output that would replace one of the run's own inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from interdyn.data.video import encode_video
from interdyn.errors import InputError
from interdyn.inputs import GenerationInputs
from interdyn.utils.files import unwritable_reason, write_atomic
from interdyn.utils.render import contact_sheet, labelled_row, masks_to_rgb, png_bytes


def control_rgb(control: np.ndarray) -> np.ndarray:
    """A control sequence ``(T, H, W)`` as ``(T, H, W, 3)`` uint8 frames: binary masks white on black,
    masks as given (values in 0..1) in their grey levels."""
    if control.dtype == bool:
        return masks_to_rgb(control)
    grey = np.clip(np.round(control * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _stem(inputs: GenerationInputs) -> str:
    return f"{inputs.name}_cf" if len(inputs.controls) > 1 else inputs.name


def sample_names(inputs: GenerationInputs, label: str, num_samples: int) -> list[str]:
    """The mp4 of each sample of the control sequence ``label``."""
    prefix = f"{inputs.name}_{label}" if len(inputs.controls) > 1 else inputs.name
    return [f"{prefix}_s{k}.mp4" for k in range(num_samples)]


def output_names(inputs: GenerationInputs, num_samples: int) -> list[str]:
    """Every file name a run writes, in the order it writes them (the settings last)."""
    names = [name for label in inputs.labels for name in sample_names(inputs, label, num_samples)]
    stem = _stem(inputs)
    names.append(f"{stem}_grid.mp4" if len(inputs.controls) > 1 else f"{stem}_compare.mp4")
    return [*names, f"{stem}_sheet.png", f"{inputs.name}_settings.json"]


def check_out_folder(out: Path) -> None:
    """``--out`` can be made and written (checked before any input is read or weights loaded; nothing is
    created)."""
    reason = unwritable_reason(out)
    if reason is not None:
        raise InputError(f"--out '{out}' cannot hold the outputs: {reason}.")


def _input_files(paths: list[str | Path]) -> set[Path]:
    """The files a run reads: the given files, and the files directly inside given folders."""
    files: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files.update(p.resolve() for p in path.iterdir() if p.is_file())
        elif path.exists():
            files.add(path.resolve())
    return files


def check_outputs(
    out: Path, names: list[str], inputs: list[str | Path], overwrite: bool = False
) -> list[Path]:
    """The output paths, once none of them is an input (never replaced, even with ``overwrite``) and,
    without ``overwrite``, none exists yet."""
    paths = [out / name for name in names]
    reads = _input_files(inputs)
    for path in paths:
        if path.resolve() in reads:
            raise InputError(
                f"the output '{path}' would replace an input of this run; choose another --out or --name."
            )
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise InputError(
            f"the output '{existing[0]}'{more} already exists; pass --overwrite to replace it, or choose "
            "another --out or --name."
        )
    return paths


def write_outputs(inputs: GenerationInputs, videos: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Per-sample mp4s, a labelled comparison video and a contact sheet (a grid in counterfactual mode),
    under the names of :func:`output_names`."""
    t = len(inputs.controls[0])
    image = np.broadcast_to(inputs.image, (t, *inputs.image.shape))
    counterfactual = len(inputs.controls) > 1
    paths: list[Path] = []

    def mp4(name: str, frames: np.ndarray) -> None:
        data = encode_video(np.ascontiguousarray(frames), inputs.fps)
        paths.append(write_atomic(out / name, data))

    rows, sheet_rows, sheet_labels = [], [image], ["input"]
    for label, control in zip(inputs.labels, inputs.controls, strict=True):
        samples = videos[label]
        for name, sample in zip(sample_names(inputs, label, len(samples)), samples, strict=True):
            mp4(name, sample)
        shown = control_rgb(control)
        panels = [image, shown, *samples]
        names = ["input", f"control {label}" if counterfactual else "control"]
        names += [f"sample {k}" for k in range(len(samples))]
        if inputs.truth is not None:
            panels.append(inputs.truth)
            names.append("ground truth")
        rows.append(labelled_row(panels, names))
        tag = f"{label}: " if counterfactual else ""
        sheet_rows += [shown, *samples]
        sheet_labels += [f"{tag}control", *(f"{tag}sample {k}" for k in range(len(samples)))]
    if inputs.truth is not None:
        sheet_rows.append(inputs.truth)
        sheet_labels.append("ground truth")

    stem = _stem(inputs)
    mp4(f"{stem}_grid.mp4" if counterfactual else f"{stem}_compare.mp4", np.concatenate(rows, axis=1))
    sheet = contact_sheet(sheet_rows, sheet_labels)
    paths.append(write_atomic(out / f"{stem}_sheet.png", png_bytes(sheet)))
    return paths


def write_run(
    inputs: GenerationInputs, videos: dict[str, np.ndarray], out: Path, record: dict[str, Any]
) -> list[Path]:
    """Every output of a run: :func:`write_outputs`, then ``<name>_settings.json`` (``record`` and the files
    written); the paths are printed."""
    paths = write_outputs(inputs, videos, out)
    record = {**record, "files": [p.name for p in paths]}
    paths.append(write_atomic(out / f"{inputs.name}_settings.json", json.dumps(record, indent=2).encode()))
    print(f"wrote {len(paths)} files to {out}/:")
    for path in paths:
        print(f"  {path}")
    return paths
