"""``interdyn generate`` on the Wan2.2 TI2V backbone: the same inputs, outputs and seeds as SVD's path
(:mod:`interdyn.commands.generate`, which dispatches here), sampled by
:class:`~interdyn.models.wan.InterDynWanPipeline`.

    interdyn generate --wan checkpoints/wan2.2-ti2v-5b --controlnet my_wan_branch/ \\
        --image scene.png --control hand.webm --num_frames 49 --fps 12
    interdyn generate --controlnet my_wan_branch/ --image scene.png --control hand.webm   # an export names its base
    interdyn generate --wan random:wan-tiny --controlnet none --image scene.png --control hand.webm \\
        --height 64 --width 64 --steps 2                                                 # no weights needed

What differs from SVD: a Wan clip has ``1 + 4k`` frames (the VAE encodes the first frame alone, then 4
frames per latent frame; the SVD default of 14 becomes 13, another count is refused in one sentence, and
a driver cut shorter by its file loses its last frames down to ``1 + 4k``) and a size that is a multiple
of 32; the sampler is the base's own scheduler, whose only settings here are ``--steps`` and
``--conditioning_scale``; the text context is one fixed prompt embedding (zeros by default,
``--prompt_embeds`` for a file), optionally guided away from a negative one (``--guidance_scale`` with
``--negative_prompt_embeds``). A clip is one pass however long, or with ``--continuation hold`` or ``chain``
overlapping windows of ``--window_frames`` (:mod:`interdyn.models.wan.long`, docs/long.md).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors import SafetensorError

from interdyn.commands.backbone import (
    branch_record,
    check_wan_compatible,
    is_wan_base,
    load_wan_branch,
    recorded_base,
)
from interdyn.commands.generate import (
    GenerateResult,
    clip_spec,
    prepare_run,
    resolve_dtype,
    run_record,
)
from interdyn.commands.generate_outputs import write_run
from interdyn.commands.parsers import given_settings, resolve_device
from interdyn.data.clip_spec import ClipRules
from interdyn.errors import InputError
from interdyn.inputs import DEMO_CLIP, GenerationInputs, control_tensor
from interdyn.models.long import short_last_window
from interdyn.models.pipeline import image_to_tensor
from interdyn.models.released import RELEASED_REPO
from interdyn.models.sampling import DEFAULT_SAMPLING, SamplingSettings
from interdyn.models.wan import InterDynWanPipeline, get_wan, load_prompt_embeds, zero_prompt_embeds
from interdyn.models.wan.components import WAN_TI2V_REPO
from interdyn.models.wan.long import plan_wan_windows, sample_wan_windows
from interdyn.training.wan_setup import BACKBONE
from interdyn.utils.render import to_uint8

FRAME_STEP = 4  # frames per latent frame after the first (the Wan2.2 VAE's temporal compression)
PIXELS_PER_TOKEN = 32  # the Wan2.2 VAE's x16 times the transformer's 2x2 patch
WAN_SAMPLING = ("num_inference_steps", "conditioning_scale")  # the sampling settings Wan's sampler takes
WAN_LONG = ("continuation", "window_overlap")  # and the long-video settings Wan takes (docs/long.md)
# long videos by default: the window (configs/wan_ssv2.yaml's clip) and the overlap
WAN_WINDOW, WAN_OVERLAP = 49, 5
NO_BRANCH = "none"
WAN_RULES = ClipRules(BACKBONE, FRAME_STEP, PIXELS_PER_TOKEN)  # what a Wan2.2 TI2V clip must be


@dataclass
class LoadedWanWeights:
    """The Wan pipeline of ``--wan``/``--controlnet`` on a device, loaded once and reusable (the app keeps
    one between runs)."""

    pipe: InterDynWanPipeline
    base: Any  # what the base resolved to (--wan, the branch's recorded base, or the hub id)
    recorded: dict[str, Any]  # the branch's interdyn_base.json ({} without a branch or record)
    device: torch.device
    dtype: torch.dtype
    key: tuple


def wan_weights_key(args: Any) -> tuple:
    """The arguments that decide which Wan weights a run needs."""
    return ("wan", args.wan, args.svd, args.controlnet, args.device, args.dtype)


def branch_source(args: Any) -> str | None:
    """The branch ``--controlnet`` names, or None for none (``none``, or the released branch, which is
    SVD's, left as the default)."""
    return None if args.controlnet in (NO_BRANCH, RELEASED_REPO) else args.controlnet


def wan_base(args: Any, recorded: dict[str, Any]) -> Any:
    """``--wan``, else ``--svd`` where it names a Wan folder, else the branch's recorded base, else the
    hub's Wan2.2 TI2V-5B."""
    if args.wan is not None:
        return args.wan
    if args.svd is not None:
        if not is_wan_base(args.svd):
            raise InputError(
                f"--svd '{args.svd}' is not a Wan2.2 TI2V model, but the backbone is wan; name the Wan base "
                "with --wan."
            )
        return args.svd
    return recorded.get("base", WAN_TI2V_REPO)


def load_wan_weights(args: Any) -> LoadedWanWeights:
    """Load the Wan base and branch that ``args`` name, check they fit, build the pipeline."""
    device = resolve_device(args.device)
    dtype = wan_dtype(args.dtype, device)
    source = branch_source(args)
    branch, recorded = load_wan_branch(source, dtype) if source is not None else (None, {})
    base = wan_base(args, recorded)
    wan = get_wan(base, torch_dtype=dtype)
    if branch is not None:
        check_wan_compatible(branch, wan)
    pipe = InterDynWanPipeline.from_components(wan, branch).to(device)
    return LoadedWanWeights(pipe, base, recorded, device, dtype, wan_weights_key(args))


def wan_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (Wan's own dtype; float16 can overflow in its blocks), float32 else."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return resolve_dtype(name, device)


def wan_clip_args(args: Any) -> Any:
    """``args`` with a clip length Wan takes: SVD's default 14 becomes 13 (said); a count that is not
    ``1 + 4k`` (at least 5), a size that is not a multiple of 32 and a setting of SVD's sampler are refused
    in one sentence."""
    given = sorted(set(given_settings(args, SamplingSettings)) - set(WAN_SAMPLING) - set(WAN_LONG))
    if given:
        raise InputError(
            f"--{given[0]} is a setting of SVD's sampler; Wan samples with its base's own scheduler and takes "
            "--steps and --conditioning_scale."
        )
    frames, clip = args.num_frames, clip_spec(args)
    lower = 1 + FRAME_STEP * max(0, (frames - 1) // FRAME_STEP)
    if frames == DEMO_CLIP.num_frames and frames != lower:
        print(
            f"clip: {lower} frames, Wan's 1 + {FRAME_STEP}k nearest below the default {frames} (--num_frames)"
        )
        args = copy.copy(args)
        args.num_frames = lower
    try:
        WAN_RULES.check(args.num_frames, clip.height, clip.width)
    except ValueError as err:
        raise InputError(f"{err}.") from None
    return args


@dataclass(frozen=True)
class WanWindows:
    """How a Wan video is sampled: ``continuation`` (``single``: one pass), the window's frames and the
    overlap (None in one pass)."""

    continuation: str = "single"
    window: int | None = None
    overlap: int | None = None

    def record(self, frames: int) -> dict[str, Any]:
        """The run record's ``continuation``, ``model_window`` and ``windows`` (``[start, stop]`` each) for a
        video of ``frames`` frames, as SVD's runs record them; one sentence when a driver cut the clip to one
        window or less."""
        if self.window is None or self.overlap is None:
            return {"continuation": "single", "model_window": frames, "windows": [[0, frames]]}
        if frames <= self.window:
            raise InputError(
                f"--continuation {self.continuation} needs a clip longer than one window of {self.window} frames, "
                f"but the driver gives {frames} (a shorter --window_frames, or a longer driver)."
            )
        plan = plan_wan_windows(frames, self.window, self.overlap)
        return {
            "continuation": self.continuation,
            "model_window": self.window,
            "windows": [[w.start, w.stop] for w in plan],
        }


def wan_windows(args: Any) -> WanWindows:
    """The long-video options, checked before anything is read: ``--continuation hold`` or ``chain`` samples
    the clip in windows of ``--window_frames`` (default 49) overlapping by ``--window_overlap`` (default 5),
    each ``1 + 4k`` frames; the default, ``single``, is one pass however long the clip (Wan has no fixed
    window). ``context`` (SVD's context branches), a window option without a long mode, and a clip of at most
    one window are refused in one sentence."""
    given = given_settings(args, SamplingSettings)
    continuation = given.get("continuation", "single")
    window_given = getattr(args, "window_frames", None)
    if continuation == "context":
        raise InputError(
            "--continuation context needs SVD's context branch; on Wan use --continuation hold or chain."
        )
    if continuation == "single":
        extra = "window_overlap" if "window_overlap" in given else "window_frames" if window_given else None
        if extra is not None:
            raise InputError(
                f"--{extra} sets the windows of a long video: add --continuation hold or chain (on Wan one pass "
                "is the default, however long the clip)."
            )
        return WanWindows()
    window = int(window_given or WAN_WINDOW)
    overlap = int(given.get("window_overlap", WAN_OVERLAP))
    if args.num_frames <= window:
        raise InputError(
            f"--continuation {continuation} samples windows of {window} frames (--window_frames) and needs a "
            f"longer clip, but this one has {args.num_frames} frames (ask for more with --num_frames)."
        )
    try:
        plan_wan_windows(args.num_frames, window, overlap)
    except ValueError as err:
        raise InputError(
            f"--{str(err).rstrip('.')}." if "window_overlap" in str(err) else f"{err}."
        ) from None
    return WanWindows(continuation, window, overlap)


def whole_latent_frames(inputs: GenerationInputs) -> GenerationInputs:
    """The inputs cut to ``1 + 4k`` frames when a short driver cut the clip to another length (said)."""
    frames = len(inputs.controls[0])
    keep = 1 + FRAME_STEP * ((frames - 1) // FRAME_STEP)
    if keep == frames:
        return inputs
    note = f"the driver gives {frames} frames: the first {keep} are taken (a Wan clip has 1 + 4k frames)"
    print(note)
    return dataclasses.replace(
        inputs,
        controls=[c[:keep] for c in inputs.controls],
        truth=None if inputs.truth is None else inputs.truth[:keep],
        source_frames=inputs.source_frames[:keep],
        notes=[*inputs.notes, note],
    )


def wan_sampling(args: Any, recorded: dict[str, Any]) -> dict[str, Any]:
    """Steps, branch scale and prompt guidance: the command line's, else the branch's recorded ones, else the
    defaults."""
    given = {k: v for k, v in given_settings(args, SamplingSettings).items() if k in WAN_SAMPLING}
    values = {k: recorded[k] for k in WAN_SAMPLING if k in recorded} | given
    steps = int(values.get("num_inference_steps", DEFAULT_SAMPLING.num_inference_steps))
    if steps < 1:
        raise InputError("--num_inference_steps (--steps) must be at least 1.")
    scale = float(values.get("conditioning_scale", DEFAULT_SAMPLING.conditioning_scale))
    given_guidance = getattr(args, "guidance_scale", None)
    guidance = float(given_guidance if given_guidance is not None else recorded.get("guidance_scale", 1.0))
    check_guidance_scale(guidance)
    return {"num_inference_steps": steps, "conditioning_scale": scale, "guidance_scale": guidance}


def check_guidance_scale(scale: float) -> None:
    """Refuse a prompt guidance scale below 1 in one sentence."""
    if not scale >= 1:
        raise InputError(f"--guidance_scale must be at least 1 (1: no prompt guidance), got {scale:g}.")


def check_guidance_early(args: Any) -> None:
    """Before any weights are read: a ``--guidance_scale`` below 1, or above 1 with no negative prompt embedding
    given and none that a branch folder could record (no branch, or a folder without one)."""
    scale = getattr(args, "guidance_scale", None)
    if scale is None:
        return
    check_guidance_scale(scale)
    if scale <= 1 and getattr(args, "negative_prompt_embeds", None) is not None:
        raise_unused_negative()
    source = branch_source(args)
    if scale > 1 and getattr(args, "negative_prompt_embeds", None) is None:
        folder = source is not None and Path(source).expanduser().is_dir()
        if source is None or (folder and branch_record(source).get("negative_prompt_embeds") is None):
            raise_no_negative(scale)


def raise_unused_negative() -> NoReturn:
    """The one sentence for a negative prompt embedding given while prompt guidance is off."""
    raise InputError(
        "--negative_prompt_embeds is the negative side of prompt guidance, which is off (guidance scale 1): add "
        "--guidance_scale above 1, or leave it out."
    )


def raise_no_negative(scale: float) -> NoReturn:
    """The one sentence for prompt guidance without a negative prompt embedding."""
    raise InputError(
        f"--guidance_scale {scale:g} needs a negative prompt embedding: pass --negative_prompt_embeds (a file "
        "written by interdyn prompt), or --guidance_scale 1."
    )


def read_prompt_embeds(path: Any, text_dim: int, option: str) -> torch.Tensor:
    """The prompt embedding ``(1, S, text_dim)`` stored at ``path`` (named by ``option``, or recorded with the
    branch); a missing, unreadable or mis-shaped file is one sentence."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise InputError(f"the prompt embedding '{path}' does not exist (--{option}).")
    try:
        embeds = load_prompt_embeds(file)
    except (OSError, ValueError, SafetensorError) as err:
        raise InputError(f"'{path}' is not a prompt embedding file ({err}).") from None
    if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[-1] != text_dim:
        raise InputError(
            f"the prompt embedding '{path}' has shape {tuple(embeds.shape)}, but this Wan base takes "
            f"(1, length, {text_dim})."
        )
    return embeds


def prompt_embedding(args: Any, weights: LoadedWanWeights) -> tuple[torch.Tensor, str]:
    """The fixed prompt embedding ``(1, S, text_dim)`` and what it is: ``--prompt_embeds``, else the one the
    branch was trained with, else zeros."""
    text_dim = weights.pipe.transformer.config.text_dim
    path = args.prompt_embeds or weights.recorded.get("prompt_embeds")
    if path is None:
        return zero_prompt_embeds(text_dim), "zeros (no text)"
    return read_prompt_embeds(path, text_dim, "prompt_embeds"), str(path)


def negative_embedding(
    args: Any, weights: LoadedWanWeights, guidance_scale: float
) -> tuple[torch.Tensor | None, str | None]:
    """The negative prompt embedding of prompt guidance and its file: ``--negative_prompt_embeds``, else the
    one the branch's run named; none without guidance (where one given is refused rather than ignored), and a
    guidance scale above 1 without one is refused."""
    if guidance_scale <= 1:
        if getattr(args, "negative_prompt_embeds", None) is not None:
            raise_unused_negative()
        return None, None
    path = getattr(args, "negative_prompt_embeds", None) or weights.recorded.get("negative_prompt_embeds")
    if path is None:
        raise_no_negative(guidance_scale)
    text_dim = weights.pipe.transformer.config.text_dim
    return read_prompt_embeds(path, text_dim, "negative_prompt_embeds"), str(path)


def run_generate_wan(args: Any, weights: LoadedWanWeights | None = None) -> GenerateResult:
    """``interdyn generate`` with the Wan backbone: read the inputs, load the weights (or reuse
    ``weights``), sample every control sequence, write the outputs as the SVD path does."""
    resolve_device(args.device)
    args = wan_clip_args(args)
    check_guidance_early(args)
    long = wan_windows(args)
    out = Path(args.out).expanduser()
    inputs = whole_latent_frames(prepare_run(args, out))
    frames_made = len(inputs.controls[0])  # a short driver may have cut the clip to a shorter 1 + 4k
    windows = long.record(frames_made)
    if weights is not None and weights.key != wan_weights_key(args):
        raise ValueError(f"the loaded weights serve {weights.key}, not {wan_weights_key(args)}")
    weights = weights or load_wan_weights(args)
    sampling = wan_sampling(args, weights.recorded.get("sampling") or {})
    embeds, prompt = prompt_embedding(args, weights)
    negative, negative_path = negative_embedding(args, weights, sampling["guidance_scale"])
    guidance = (
        f"guidance {sampling['guidance_scale']:g} from {negative_path}"
        if negative is not None
        else "no guidance"
    )
    pipe = weights.pipe
    pipe.set_progress_bar_config(disable=args.no_progress, desc="sampling")
    base = weights.base if isinstance(weights.base, str) else "an architecture dict (random weights)"
    dtype = str(weights.dtype).removeprefix("torch.")
    print(f"weights: wan {base}, controlnet {branch_source(args) or NO_BRANCH} ({dtype} on {weights.device})")
    print(
        f"sampling: {args.num_samples} sample(s) per control, seed {args.seed}, steps "
        f"{sampling['num_inference_steps']}, conditioning_scale {sampling['conditioning_scale']:g}, "
        f"{type(pipe.scheduler).__name__}, prompt {prompt}, {guidance}"
    )
    if len(windows["windows"]) > 1:
        print(
            f"long video: {frames_made} frames in {len(windows['windows'])} windows of {long.window} "
            f"(overlap {long.overlap}, continuation {long.continuation}): {windows['windows']}"
        )
        note = short_last_window(windows["windows"], long.overlap or 0)
        if note:
            print(note)
    image = image_to_tensor(inputs.image).expand(args.num_samples, -1, -1, -1)
    videos: dict[str, np.ndarray] = {}
    for label, control in zip(inputs.labels, inputs.controls, strict=True):
        generator = torch.Generator().manual_seed(args.seed)  # as SVD's path: the same noise for every row
        if len(windows["windows"]) > 1:
            assert long.window is not None and long.overlap is not None
            frames = sample_wan_windows(
                pipe, image, embeds, control_tensor(control), long.window, long.overlap, long.continuation,
                generator, negative_prompt_embeds=negative, **sampling,
            ).frames.permute(0, 1, 3, 4, 2).cpu().numpy()  # fmt: skip
        else:
            frames = pipe(
                image, embeds, control=control_tensor(control), negative_prompt_embeds=negative,
                generator=generator, output_type="np", **sampling,
            ).frames  # fmt: skip
        videos[label] = to_uint8(frames)
    record = run_record(args, inputs, None, weights.device, weights.dtype, sampling) | windows
    del record["svd"]
    record |= {
        "backbone": "wan",
        "wan": recorded_base(weights.base),
        "controlnet": branch_source(args) or NO_BRANCH,
        "scheduler": type(pipe.scheduler).__name__,
        "prompt_embeds": prompt,
        "negative_prompt_embeds": negative_path,
    }
    paths = write_run(inputs, videos, out, record)
    return GenerateResult(inputs, videos, paths, sampling)
