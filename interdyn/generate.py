"""``interdyn generate``: videos from an image (or a clip folder) and driver masks, written to a folder.

    interdyn generate --image scene.png --control hand_masks.webm --controlnet rickakkerman/InterDyn \\
        --out out/ --num_samples 3 --seed 42
    interdyn generate --clip my_clips/243/                  # video.* + mask_hand.*: with ground truth
    interdyn generate --image scene.png --control a.webm b.webm c.webm --out out/cf/   # counterfactuals

Inputs are read and resampled by :mod:`interdyn.data.inputs` as the authors' demo prepares its examples
(14 frames at "7 FPS", i.e. every 2nd frame of a 12 fps video from frame 0; resize, then centre crop to
256x384; 3 samples per input with seed 42); weights come from a local folder, a hub id, an
``interdyn export`` folder or a Lightning
``.ckpt`` (:mod:`interdyn.export`); sampling is :class:`~interdyn.models.pipeline.InterDynPipeline`.
Every output file is written atomically. ``interdyn export`` lives in :mod:`interdyn.export`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interdyn.data.inputs import GenerationInputs, load_clip_inputs, load_image_inputs
from interdyn.data.video import encode_video
from interdyn.errors import InputError, InterDynError, WeightsMismatchError
from interdyn.export import load_branch
from interdyn.files import write_atomic
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.hub import SVD_REPO
from interdyn.models.pipeline import SCHEDULERS, InterDynPipeline
from interdyn.models.released import RELEASED_REPO
from interdyn.models.svd import SVDComponents, get_svd
from interdyn.render import contact_sheet, labelled_row, masks_to_rgb, png_bytes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Sampling defaults (the paper: Euler, 50 steps, guidance 1 -> 3 per frame; fps id 6, motion bucket 40,
# noise aug 0.02), used unless the command line or a .ckpt's hyper-parameters say otherwise.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "num_inference_steps": 50,
    "min_guidance_scale": 1.0,
    "max_guidance_scale": 3.0,
    "fps_id": 6,
    "motion_bucket_id": 40,
    "noise_aug_strength": 0.02,
    "conditioning_scale": 1.0,
    "scheduler": "euler",
}
# command-line flag -> pipeline argument
_SAMPLING_FLAGS = {
    "steps": "num_inference_steps",
    "min_guidance": "min_guidance_scale",
    "max_guidance": "max_guidance_scale",
    "fps_id": "fps_id",
    "motion_bucket_id": "motion_bucket_id",
    "noise_aug_strength": "noise_aug_strength",
    "conditioning_scale": "conditioning_scale",
    "scheduler": "scheduler",
}
# Architecture fields the branch shares with the UNet it was made from.
_MATCHING_CONFIG = (
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "num_attention_heads",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


@dataclass
class GenerateResult:
    """What a run produced: ``videos[label]`` is ``(num_samples, T, H, W, 3)`` uint8 per control sequence."""

    inputs: GenerationInputs
    videos: dict[str, np.ndarray]
    paths: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- arguments
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interdyn generate",
        description="Generate videos from one image (or a clip folder's first frame) and driver masks.",
        formatter_class=_HelpFormatter,
    )
    src = parser.add_argument_group("inputs (--image with --control, or --clip)")
    src.add_argument("--image", help="the first frame: png/jpg (or a video file: its first frame)")
    src.add_argument(
        "--control",
        nargs="+",
        help="driver masks: a mask video, a folder of mask images or a .npz; several give a "
        "counterfactual grid for the same image",
    )
    src.add_argument("--clip", help="a clip folder with video.* and mask_<name>.* (its frames: ground truth)")
    src.add_argument(
        "--control_name", help="which mask_<name> of --clip drives (default: hand, or the only one)"
    )
    src.add_argument(
        "--control_fps",
        type=float,
        help="frame rate of the masks (and of a --clip's video); default: the video's own, 7 for image "
        "folders and .npz without an fps entry",
    )
    src.add_argument("--start", type=int, default=0, help="first source frame of the clip window")
    src.add_argument("--threshold", type=int, default=128, help="mask threshold (0-255, brightest channel)")

    clip = parser.add_argument_group("clip geometry and timing (as in training)")
    clip.add_argument("--num_frames", type=int, default=14, help="frames per video")
    clip.add_argument(
        "--fps",
        type=float,
        default=7.0,
        help='target rate ("7 FPS": SVD\'s fps=7 convention); the clip takes every n-th source frame, '
        "with the stride whose rate is nearest (12 fps -> every 2nd frame, as the authors' demo)",
    )
    clip.add_argument(
        "--frame_sampling",
        choices=("uniform", "timestamp"),
        default="uniform",
        help="uniform: every n-th frame; timestamp: the frame nearest each k/fps s (uneven steps)",
    )
    clip.add_argument("--frame_stride", type=int, help="take every n-th source frame whatever the rates")
    clip.add_argument("--height", type=int, default=256, help="multiple of 8")
    clip.add_argument("--width", type=int, default=384, help="multiple of 8")
    clip.add_argument(
        "--crop",
        choices=("mask_aware", "center"),
        help="crop window after the resize: centred on the image (default center, as the authors' demo) "
        "or on the masks (mask_aware, the training default)",
    )

    weights = parser.add_argument_group("weights")
    weights.add_argument(
        "--svd",
        help=f"SVD img2vid folder or hub id, or random:tiny (default: the .ckpt's, else {SVD_REPO})",
    )
    weights.add_argument(
        "--controlnet",
        default=RELEASED_REPO,
        help="control branch: a folder (released or written by `interdyn export`), a hub id, or a .ckpt",
    )
    weights.add_argument(
        "--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU) | " + " | ".join(DTYPES)
    )
    weights.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<index>")

    sampling = parser.add_argument_group("sampling (defaults: the .ckpt's settings, else the paper's)")
    sampling.add_argument(
        "--num_samples", type=int, default=3, help="videos per control sequence (3 in the authors' demo)"
    )
    sampling.add_argument("--seed", type=int, default=42, help="the same seed gives the same videos")
    sampling.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="sampler: euler (SVD's, the paper's; default), dpmpp_2m (similar quality in about half the "
        "steps) or edm_euler",
    )
    sampling.add_argument("--steps", type=int, help="sampler steps (default 50)")
    sampling.add_argument("--min_guidance", type=float, help="guidance of the first frame (default 1.0)")
    sampling.add_argument("--max_guidance", type=float, help="guidance of the last frame (default 3.0)")
    sampling.add_argument("--fps_id", type=float, help="SVD's fps conditioning (default 6)")
    sampling.add_argument("--motion_bucket_id", type=float, help="SVD's motion bucket (default 40)")
    sampling.add_argument("--noise_aug_strength", type=float, help="noise on the image latent (default 0.02)")
    sampling.add_argument("--conditioning_scale", type=float, help="strength of the branch (default 1.0)")
    sampling.add_argument("--decode_chunk_size", type=int, help="frames decoded at once (default: all)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--out", default="generated", help="output folder (created)")
    out.add_argument(
        "--name", help="file name prefix, not a path (default: the image's stem or the clip folder's name)"
    )
    out.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------- pieces
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(
            f"--device '{name}' is not a device (use auto, cpu, cuda or cuda:<index>)."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} was asked for, but no CUDA GPU is available.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got '{name}'.")
    return DTYPES[name]


def read_inputs(args: argparse.Namespace) -> GenerationInputs:
    """The image/clip and controls named on the command line, at the model's resolution."""
    common = dict(
        num_frames=args.num_frames,
        fps=args.fps,
        height=args.height,
        width=args.width,
        crop=args.crop or "center",
        crop_given=args.crop is not None,
        frame_sampling=args.frame_sampling,
        frame_stride=args.frame_stride,
        start=args.start,
        control_fps=args.control_fps,
        threshold=args.threshold,
        name=args.name,
    )
    check_name(args.name)
    if args.clip and (args.image or args.control):
        raise InputError(
            "--clip takes its image and masks from the folder; use either --clip or --image with --control."
        )
    if args.clip:
        return load_clip_inputs(args.clip, control_name=args.control_name, **common)
    if not args.image:
        raise InputError("give an --image with one or more --control files, or a --clip folder.")
    if not args.control:
        raise InputError("--image needs --control: a mask video, a folder of mask images or a .npz.")
    return load_image_inputs(args.image, args.control, **common)


def check_name(name: str | None) -> None:
    """``--name`` is a file name prefix: no folder parts, so every output stays inside ``--out``."""
    if name is None:
        return
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).name != name:
        raise InputError(f"--name '{name}' must be a file name, not a path (outputs go into --out).")


def check_compatible(branch: ControlNetSDVModel, svd: SVDComponents) -> None:
    """The branch must have been made from a UNet of the same architecture, and take mask controls."""

    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, list | tuple) else value

    for key in _MATCHING_CONFIG:
        ours, theirs = norm(branch.config.get(key)), norm(svd.unet.config.get(key))
        if ours is not None and theirs is not None and ours != theirs:
            raise WeightsMismatchError(
                f"the control branch does not fit this SVD UNet: {key} is {ours} in the branch and {theirs} in "
                "the UNet (pair the branch with the SVD it was trained on, --svd)."
            )
    if branch.config.conditioning_channels != 3:
        raise WeightsMismatchError(
            f"the control branch takes {branch.config.conditioning_channels} control channels; masks give 3."
        )


def sampling_settings(args: argparse.Namespace, recorded: dict[str, Any]) -> dict[str, Any]:
    """Pipeline keyword arguments: command line, else the checkpoint's settings, else the defaults."""
    settings = {}
    for flag, key in _SAMPLING_FLAGS.items():
        value = getattr(args, flag)
        settings[key] = value if value is not None else recorded.get(key, SAMPLING_DEFAULTS[key])
    settings["num_inference_steps"] = int(settings["num_inference_steps"])
    if settings["num_inference_steps"] < 1:
        raise InputError("--steps must be at least 1.")
    return settings


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ---------------------------------------------------------------------------- outputs
def write_outputs(inputs: GenerationInputs, videos: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Per-sample mp4s, a labelled comparison video and a contact sheet (a grid in counterfactual mode)."""
    name, fps, t = inputs.name, inputs.fps, len(inputs.controls[0])
    image = np.broadcast_to(inputs.image, (t, *inputs.image.shape))
    counterfactual = len(inputs.controls) > 1
    paths: list[Path] = []

    def mp4(path: Path, frames: np.ndarray) -> None:
        paths.append(write_atomic(path, encode_video(np.ascontiguousarray(frames), fps)))

    rows, sheet_rows, sheet_labels = [], [image], ["input"]
    for label, control in zip(inputs.labels, inputs.controls, strict=True):
        samples = videos[label]
        prefix = f"{name}_{label}" if counterfactual else name
        for k, sample in enumerate(samples):
            mp4(out / f"{prefix}_s{k}.mp4", sample)
        panels = [image, masks_to_rgb(control), *samples]
        names = ["input", f"control {label}" if counterfactual else "control"]
        names += [f"sample {k}" for k in range(len(samples))]
        if inputs.truth is not None:
            panels.append(inputs.truth)
            names.append("ground truth")
        rows.append(labelled_row(panels, names))
        tag = f"{label}: " if counterfactual else ""
        sheet_rows += [masks_to_rgb(control), *samples]
        sheet_labels += [f"{tag}control", *(f"{tag}sample {k}" for k in range(len(samples)))]
    if inputs.truth is not None:
        sheet_rows.append(inputs.truth)
        sheet_labels.append("ground truth")

    stem = f"{name}_cf" if counterfactual else name
    mp4(out / (f"{stem}_grid.mp4" if counterfactual else f"{stem}_compare.mp4"), np.concatenate(rows, axis=1))
    sheet = contact_sheet(sheet_rows, sheet_labels)
    paths.append(write_atomic(out / f"{stem}_sheet.png", png_bytes(sheet)))
    return paths


# ---------------------------------------------------------------------------- the command
@dataclass
class LoadedWeights:
    """The sampling pipeline of ``--svd``/``--controlnet`` on a device, loaded once and reusable: the
    browser app (:mod:`interdyn.app`) keeps one between runs and passes it to :func:`run_generate`."""

    pipe: InterDynPipeline
    svd_source: Any  # what --svd resolved to (the .ckpt's SVD, or the default hub id, when not given)
    recorded: dict[str, Any]  # a .ckpt's sampling settings ({} for folders and hub ids)
    device: torch.device
    dtype: torch.dtype
    key: tuple  # (svd, controlnet, device, dtype) as asked for: which arguments these weights serve


def weights_key(args: argparse.Namespace) -> tuple:
    """The arguments that decide which weights a run needs."""
    return (args.svd, args.controlnet, args.device, args.dtype)


def load_weights(args: argparse.Namespace) -> LoadedWeights:
    """Load the branch and SVD that ``args`` name, check they fit each other, build the pipeline."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    branch, recorded = load_branch(args.controlnet, torch_dtype=dtype)
    svd_source = args.svd if args.svd is not None else recorded.get("svd", SVD_REPO)
    svd = get_svd(svd_source, torch_dtype=dtype)
    check_compatible(branch, svd)
    pipe = InterDynPipeline.from_components(svd, branch).to(device)
    return LoadedWeights(pipe, svd_source, recorded, device, dtype, weights_key(args))


def run_generate(args: argparse.Namespace, weights: LoadedWeights | None = None) -> GenerateResult:
    """Read the inputs, load the weights (or reuse ``weights``, loaded by :func:`load_weights` for the same
    ``--svd``/``--controlnet``/``--device``/``--dtype``), sample every control sequence, write the outputs."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.num_samples < 1:
        raise InputError("--num_samples must be at least 1.")
    inputs = read_inputs(args)  # bad inputs fail before any weights are loaded
    taken = ", ".join(map(str, inputs.source_frames)) or "one still mask"
    print(f"timing: {inputs.timing}; source frames {taken}")
    for note in inputs.notes:
        print(note)

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}' exists and is not a folder.")
    if weights is not None and weights.key != weights_key(args):
        raise ValueError(f"the loaded weights serve {weights.key}, not {weights_key(args)}")
    if weights is None:
        weights = load_weights(args)
    svd_source, recorded, pipe = weights.svd_source, weights.recorded, weights.pipe
    settings = sampling_settings(args, recorded)
    pipe.set_progress_bar_config(disable=args.no_progress, desc="sampling")
    svd_name = svd_source if isinstance(svd_source, str) else "an architecture dict (random weights)"
    print(
        f"weights: svd {svd_name}, controlnet {args.controlnet} ({str(dtype).removeprefix('torch.')} on {device})"
    )
    print(
        f"sampling: {args.num_samples} sample(s) per control, seed {args.seed}, "
        + ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}" for k, v in settings.items())
    )

    videos: dict[str, np.ndarray] = {}
    for label, control in zip(inputs.labels, inputs.controls, strict=True):
        # One CPU generator per control sequence, seeded alike: the same seed gives the same video on
        # any device, and counterfactual rows differ only by their masks, not by their noise.
        generator = torch.Generator().manual_seed(args.seed)
        frames = pipe(
            inputs.image,
            torch.from_numpy(control),
            num_videos_per_prompt=args.num_samples,
            generator=generator,
            decode_chunk_size=args.decode_chunk_size,
            output_type="np",
            **settings,
        ).frames
        videos[label] = _uint8(frames)

    paths = write_outputs(inputs, videos, out)
    record = {
        "name": inputs.name,
        "image": args.image,
        "clip": args.clip,
        "control": args.control,
        "control_labels": inputs.labels,
        "svd": svd_source,
        "controlnet": args.controlnet,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "seed": args.seed,
        "num_samples": args.num_samples,
        "num_frames": args.num_frames,
        "fps": inputs.fps,
        "frame_sampling": args.frame_sampling,
        "frame_stride": args.frame_stride,
        "timing": inputs.timing,
        "source_frames": inputs.source_frames,
        "crop": args.crop or "center",
        "height": args.height,
        "width": args.width,
        "sampling": settings,
        "inputs": inputs.notes,
        "files": [p.name for p in paths],
    }
    paths.append(write_atomic(out / f"{inputs.name}_settings.json", json.dumps(record, indent=2).encode()))
    print(f"wrote {len(paths)} files to {out}/:")
    for path in paths:
        print(f"  {path}")
    return GenerateResult(inputs, videos, paths, settings)


def generate(argv: list[str]) -> GenerateResult:
    """Python entry: parse ``argv`` as on the command line and run; user errors raise InterDynError."""
    return run_generate(build_parser().parse_args(argv))


def generate_main(argv: list[str]) -> int:
    """``interdyn generate``: returns the exit code (2 with one sentence on stderr for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        run_generate(args)
    except InterDynError as err:
        print(f"interdyn generate: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(generate_main(sys.argv[1:]))
