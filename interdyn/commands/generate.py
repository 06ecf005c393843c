"""``interdyn generate``: videos from an image (or a clip folder) and driver masks, written to a folder.

    interdyn generate --image scene.png --control hand_masks.webm --controlnet rickakkerman/InterDyn \\
        --out out/ --num_samples 3 --seed 42
    interdyn generate --clip my_clips/243/                  # video.* + mask_hand.*: with ground truth
    interdyn generate --image scene.png --control a.webm b.webm c.webm --out out/cf/   # counterfactuals

Inputs are read and resampled by :mod:`interdyn.inputs` as the authors' demo prepares its examples
(14 frames at "7 FPS", i.e. every 2nd frame of a 12 fps video from frame 0; resize, then centre crop to
256x384; 3 samples per input with seed 42); weights come from a local folder, a hub id, an
``interdyn export`` folder or a Lightning
``.ckpt`` (:mod:`interdyn.commands.export`); sampling is :class:`~interdyn.models.pipeline.InterDynPipeline`.
A driver longer than the model's window (``--num_frames 30``) is sampled in overlapping windows
(``--continuation hold`` or ``chain``, ``--window_overlap``) or in one pass (``single``): docs/long.md.
Every output file is written atomically. ``interdyn export`` lives in :mod:`interdyn.commands.export`.
The Wan2.2 TI2V backbone (``--backbone wan``, ``--wan``, or detected from the weights named:
:func:`~interdyn.commands.backbone.backbone_of`) is sampled by :mod:`interdyn.commands.generate_wan`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ArgumentParser

from interdyn.commands.backbone import add_backbone_options, backbone_of
from interdyn.commands.generate_outputs import check_out_folder, check_outputs, output_names, write_run
from interdyn.commands.parsers import (
    add_default_note,
    add_settings_options,
    command_parser,
    given_settings,
    resolve_device,
    run_command,
    settings_from,
)
from interdyn.commands.spelling import OLD_SPELLINGS
from interdyn.data.clip_spec import ClipSpec
from interdyn.errors import InputError, WeightsMismatchError
from interdyn.inputs import (
    DEMO_CLIP,
    GenerationInputs,
    ReadOptions,
    control_tensor,
    load_clip_inputs,
    load_image_inputs,
)
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.hub import SVD_REPO
from interdyn.models.long import Window, check_overlap, plan_windows, short_last_window
from interdyn.models.pipeline import InterDynPipeline
from interdyn.models.released import RELEASED_REPO
from interdyn.models.sampling import SamplingSettings
from interdyn.models.svd import SVDComponents, get_svd
from interdyn.training.checkpoint import load_branch
from interdyn.training.settings import DTYPES
from interdyn.utils.render import to_uint8

MAX_SAMPLES = 32  # videos per control sequence in one run: all are sampled as one batch and kept in memory

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
@dataclass
class GenerateOptions:
    """Generate videos from one image (or a clip folder's first frame) and driver masks.

    The clip's settings (--num_frames, --fps, --frame_sampling, --frame_stride, --height, --width,
    --crop) are the fields of ClipSpec and the sampling settings (--num_inference_steps, alias --steps,
    --min_guidance_scale, --max_guidance_scale, --fps_id, ..., --scheduler) those of SamplingSettings: the
    parser spells each field as a flag (:func:`build_parser`), :func:`clip_spec` and
    :func:`sampling_settings` read them back.

    Args:
        image: the first frame: png/jpg (or a video file: its first frame); give --control with it
        control: driver masks: a mask video, a folder of mask images or a .npz; several give a
            counterfactual grid for the same image
        clip: a clip folder with video.* and mask_<name>.* (its frames: ground truth), instead of --image
        control_name: which mask_<name> of --clip drives (default: hand, or the only one)
        control_fps: frame rate of the masks (and of a --clip's video); default: the video's own, 7 for
            image folders and .npz without an fps entry
        start: first source frame of the clip window
        threshold: mask threshold, 1-255 on the brightest channel (a pixel at or above it drives), or
            none: the masks as given, their brightest channel scaled to 0..1 without a cut (as the
            authors' demo feeds its mask videos)
        svd: SVD img2vid folder or hub id, or random:tiny (default: the .ckpt's, else the SVD hub repo)
        controlnet: control branch: a folder (released or written by `interdyn export`), a hub id, or a
            .ckpt
        dtype: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16
        device: auto, cpu, cuda or cuda:<index>
        num_samples: videos per control sequence (3 in the authors' demo; at most 32)
        seed: the same seed gives the same videos
        decode_chunk_size: frames decoded at once (default: all)
        out: output folder (created)
        name: file name prefix, not a path (default: the image's stem or the clip folder's name)
        overwrite: replace outputs of an earlier run with the same --out and --name (inputs are never
            replaced)
        no_progress: no progress bar
    """

    image: str | None = None
    control: list[str] | None = None
    clip: str | None = None
    control_name: str | None = None
    control_fps: float | None = None
    start: int = 0
    threshold: int | Literal["none"] | None = None
    svd: str | None = None
    controlnet: str = RELEASED_REPO
    dtype: str = "auto"
    device: str = "auto"
    num_samples: int = 3
    seed: int = 42
    decode_chunk_size: int | None = None
    out: str = "generated"
    name: str | None = None
    overwrite: bool = False
    no_progress: bool = False


def build_parser() -> ArgumentParser:
    """The parser of ``interdyn generate``: the options of :class:`GenerateOptions`, a flag for each field of
    :class:`ClipSpec` (default: the authors' demo clip; the window is ``--start``) and of
    :class:`SamplingSettings` (default: the checkpoint's, else the paper's), with their older spellings."""
    parser = command_parser(GenerateOptions, "interdyn generate", multiple=["control"])
    add_settings_options(parser, ClipSpec, DEMO_CLIP, skip=["window"])
    add_settings_options(parser, SamplingSettings, "the .ckpt's, else {}", aliases=OLD_SPELLINGS)
    add_default_note(parser, {"threshold": "none with --clip, as the authors' demo; 128 with --image"})
    add_backbone_options(parser)
    return parser


# ---------------------------------------------------------------------------- pieces
def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got '{name}'.")
    return DTYPES[name]


def mask_threshold(args: GenerateOptions) -> int | None:
    """The threshold the masks are read with: None (as given) for ``--threshold none`` and, by default,
    for ``--clip`` (the authors' example folders, fed as they decode); else 128 or the one given."""
    if args.threshold == "none" or (args.threshold is None and args.clip):
        return None
    return 128 if args.threshold is None else args.threshold


def clip_spec(args: GenerateOptions) -> ClipSpec:
    """The clip the options ask for: the authors' demo clip (centre crop) with the clip flags given."""
    return settings_from(args, DEMO_CLIP)


def read_inputs(args: GenerateOptions) -> GenerationInputs:
    """The image/clip and controls named on the command line, at the model's resolution."""
    clip = clip_spec(args)
    options = ReadOptions(
        start=args.start,
        control_fps=args.control_fps,
        threshold=mask_threshold(args),
        name=args.name,
        crop_given=clip.crop != DEMO_CLIP.crop,
    )
    check_name(args.name)
    if args.clip and (args.image or args.control):
        raise InputError(
            "--clip takes its image and masks from the folder; use either --clip or --image with --control."
        )
    if args.clip:
        return load_clip_inputs(args.clip, args.control_name, clip, options)
    if not args.image:
        raise InputError("give an --image with one or more --control files, or a --clip folder.")
    if not args.control:
        raise InputError("--image needs --control: a mask video, a folder of mask images or a .npz.")
    return load_image_inputs(args.image, args.control, clip, options)


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


def sampling_settings(args: GenerateOptions, recorded: dict[str, Any]) -> SamplingSettings:
    """The command line's settings, else the checkpoint's, else the defaults."""
    try:
        settings = SamplingSettings.from_mapping(recorded).with_overrides(
            **given_settings(args, SamplingSettings)
        )
    except ValueError as err:  # a value the settings refuse, e.g. an unknown --scheduler
        raise InputError(f"{err}.") from None
    if int(settings.num_inference_steps) < 1:
        raise InputError("--num_inference_steps (--steps) must be at least 1.")
    return settings.with_overrides(num_inference_steps=int(settings.num_inference_steps))


def window_plan(
    args: GenerateOptions, settings: SamplingSettings, frames: int, window: int
) -> dict[str, Any]:
    """How a driver of ``frames`` frames is sampled by a model of ``window`` frames: the run record's
    ``continuation`` (the one used: ``single`` for a driver of at most one window) and ``windows``
    (``[start, stop]`` each). One sentence for a long mode asked of a driver of at most one window, or for
    an overlap the window cannot take."""
    given = given_settings(args, SamplingSettings)
    if given.get("continuation", "single") != "single" and frames <= window:
        raise InputError(
            f"--continuation {settings.continuation} continues windows of the model's {window} frames and needs "
            f"a driver longer than one window, but this one has {frames} frames (ask for more with "
            "--num_frames, or leave --continuation out)."
        )
    long = frames > window and settings.continuation != "single"
    if long or "window_overlap" in given:
        try:
            check_overlap(window, settings.window_overlap)
        except ValueError as err:
            raise InputError(f"--{err}") from None
    plan = plan_windows(frames, window, settings.window_overlap) if long else [Window(0, frames, 0)]
    return {
        "continuation": settings.continuation if long else "single",
        "model_window": window,
        "windows": [[w.start, w.stop] for w in plan],
    }


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


def weights_key(args: GenerateOptions) -> tuple:
    """The arguments that decide which weights a run needs."""
    return (args.svd, args.controlnet, args.device, args.dtype)


def load_weights(args: GenerateOptions) -> LoadedWeights:
    """Load the branch and SVD that ``args`` name, check they fit each other, build the pipeline (or
    the Wan pipeline, :func:`~interdyn.commands.generate_wan.load_wan_weights`, for that backbone)."""
    if backbone_of(args) == "wan":
        from interdyn.commands.generate_wan import load_wan_weights  # it imports this module

        return load_wan_weights(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    branch, recorded = load_branch(args.controlnet, torch_dtype=dtype)
    svd_source = args.svd if args.svd is not None else recorded.get("svd", SVD_REPO)
    svd = get_svd(svd_source, torch_dtype=dtype)
    check_compatible(branch, svd)
    pipe = InterDynPipeline.from_components(svd, branch).to(device)
    return LoadedWeights(pipe, svd_source, recorded, device, dtype, weights_key(args))


def run_generate(args: GenerateOptions, weights: LoadedWeights | None = None) -> GenerateResult:
    """Read the inputs, load the weights (or reuse ``weights``, loaded by :func:`load_weights` for the same
    ``--svd``/``--controlnet``/``--device``/``--dtype``), sample every control sequence, write the outputs."""
    if backbone_of(args) == "wan":
        from interdyn.commands.generate_wan import run_generate_wan  # it imports this module

        return run_generate_wan(args, weights)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    out = Path(args.out).expanduser()
    inputs = prepare_run(args, out)

    if weights is not None and weights.key != weights_key(args):
        raise ValueError(f"the loaded weights serve {weights.key}, not {weights_key(args)}")
    if weights is None:
        weights = load_weights(args)
    svd_source, recorded, pipe = weights.svd_source, weights.recorded, weights.pipe
    chosen = sampling_settings(args, recorded)
    length = len(inputs.controls[0])
    windows = window_plan(args, chosen, length, int(pipe.unet.config.num_frames or length))
    settings = chosen.as_kwargs()
    pipe.set_progress_bar_config(disable=args.no_progress, desc="sampling")
    svd_name = svd_source if isinstance(svd_source, str) else "an architecture dict (random weights)"
    print(
        f"weights: svd {svd_name}, controlnet {args.controlnet} ({str(dtype).removeprefix('torch.')} on {device})"
    )
    print(
        f"sampling: {args.num_samples} sample(s) per control, seed {args.seed}, "
        + ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}" for k, v in settings.items())
    )
    if len(windows["windows"]) > 1:
        print(
            f"long video: {length} frames in {len(windows['windows'])} windows of {windows['model_window']} "
            f"(overlap {chosen.window_overlap}, continuation {chosen.continuation}): {windows['windows']}"
        )
        note = short_last_window(windows["windows"], chosen.window_overlap)
        if note:
            print(note)

    videos: dict[str, np.ndarray] = {}
    for label, control in zip(inputs.labels, inputs.controls, strict=True):
        # One CPU generator per control sequence, seeded alike: the same seed gives the same video on
        # any device, and counterfactual rows differ only by their masks, not by their noise.
        generator = torch.Generator().manual_seed(args.seed)
        frames = pipe(
            inputs.image,
            control_tensor(control),
            num_videos_per_prompt=args.num_samples,
            generator=generator,
            decode_chunk_size=args.decode_chunk_size,
            output_type="np",
            **settings,
        ).frames
        videos[label] = to_uint8(frames)

    record = run_record(args, inputs, svd_source, device, dtype, settings) | windows
    paths = write_run(inputs, videos, out, record)
    return GenerateResult(inputs, videos, paths, settings)


def prepare_run(args: GenerateOptions, out: Path) -> GenerationInputs:
    """The run's inputs, once ``out`` is known to be writable and to hold none of the outputs (or
    ``--overwrite``): every check that needs no weights, before any are loaded."""
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise InputError(
            f"--num_samples must be from 1 to {MAX_SAMPLES} (all samples are drawn as one batch), got "
            f"{args.num_samples}; run again with another --seed for more."
        )
    check_out_folder(out)  # a folder that cannot be written fails now, not after sampling
    inputs = read_inputs(args)
    given = [p for p in (args.image, args.clip, *(args.control or [])) if p]
    check_outputs(out, output_names(inputs, args.num_samples), given, args.overwrite)
    taken = ", ".join(map(str, inputs.source_frames)) or "one still mask"
    print(f"timing: {inputs.timing}; source frames {taken}")
    for note in inputs.notes:
        print(note)
    threshold = mask_threshold(args)
    print(
        "masks: as given (brightest channel scaled to 0..1, no threshold; --threshold 128 binarises)"
        if threshold is None
        else f"masks: binary, a pixel drives where its brightest channel reaches {threshold}"
    )
    return inputs


def run_record(
    args: GenerateOptions,
    inputs: GenerationInputs,
    svd_source: Any,
    device: torch.device,
    dtype: torch.dtype,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The run's ``<name>_settings.json`` (without its list of files)."""
    threshold = mask_threshold(args)
    clip = clip_spec(args)
    return {
        "backbone": "svd",
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
        "threshold": "none" if threshold is None else threshold,
        "num_samples": args.num_samples,
        "num_frames": clip.num_frames,
        "fps": inputs.fps,
        "frame_sampling": clip.frame_sampling,
        "frame_stride": clip.frame_stride,
        "timing": inputs.timing,
        "source_frames": inputs.source_frames,
        "crop": clip.crop,
        "height": clip.height,
        "width": clip.width,
        "sampling": settings,
        "inputs": inputs.notes,
    }


def generate(argv: list[str]) -> GenerateResult:
    """Python entry: parse ``argv`` as on the command line and run; user errors raise InterDynError."""
    return run_generate(build_parser().parse_args(argv))


def generate_main(argv: list[str]) -> int:
    """``interdyn generate``: returns the exit code (2 with one sentence on stderr for user errors)."""
    return run_command("interdyn generate", build_parser(), run_generate, argv)


if __name__ == "__main__":
    sys.exit(generate_main(sys.argv[1:]))
