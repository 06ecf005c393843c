"""What the app's buttons do, without the UI: a thin layer over ``interdyn generate``.

Every generation writes its inputs into a run folder (``first_frame.png`` and the driver: ``driver.npz``
for a drawn path, or the uploaded mask file as it is) and runs :func:`interdyn.commands.generate.run_generate` on
the command line that ``interdyn generate`` would parse for them. Preprocessing, seeds and output files
are therefore exactly the command's; the run's ``command.txt`` repeats it from a shell. The weights are
loaded once, on the first generation, and kept. A Wan2.2 TI2V model (:data:`TINY_WAN`, or ``interdyn app
--wan``) runs the same way through generate's Wan path; the page's SVD-only settings (guidance, scheduler)
do not reach it.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interdyn.app.paths import drag_mask
from interdyn.commands.backbone import is_wan_base, save_wan_branch
from interdyn.commands.generate import (
    GenerateResult,
    LoadedWeights,
    build_parser,
    load_weights,
    read_inputs,
    run_generate,
)
from interdyn.commands.generate_wan import FRAME_STEP, WAN_OVERLAP, WAN_SAMPLING
from interdyn.data.clip_spec import ClipSpec
from interdyn.errors import InputError
from interdyn.inputs import (
    DEMO_CLIP,
    FOLDER_FPS,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    GenerationInputs,
    find_clip_parts,
    masks_npz_bytes,
    read_image,
)
from interdyn.models.sampling import SamplingSettings
from interdyn.utils.files import write_atomic, write_folder_atomic
from interdyn.utils.render import png_bytes

NUM_FRAMES = DEMO_CLIP.num_frames  # the app's clips are generate's (the paper's length); sizes vary by model
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 16, 4096, 8.0
MASK_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES | {".npz"}
# Wan's clips: generate's demo clip at the nearest 1 + 4k frames below (13).
WAN_CLIP = DEMO_CLIP.with_overrides(num_frames=1 + FRAME_STEP * ((DEMO_CLIP.num_frames - 1) // FRAME_STEP))


@dataclass(frozen=True)
class ModelChoice:
    """Weights and clips the app runs with; ``controlnet=None`` is a seeded random branch."""

    label: str  # shown at the top of the page
    svd: str | None
    controlnet: str | None
    clip: ClipSpec  # generate's demo clip at the model's size (its NUM_FRAMES frames)
    steps: int  # sampler steps unless the page sets them
    notice: str = ""  # said plainly in the page
    wan: str | None = None  # the Wan base (--wan); None: the branch's recorded one, or an SVD model
    backbone: str = "svd"  # svd or wan (which of the page's sampling settings apply)
    prompt: tuple[str, ...] = ()  # Wan: generate's prompt options (--prompt_embeds, guidance), as given


TINY_RANDOM = ModelChoice(
    label="tiny random model (CPU)",
    svd="random:tiny",
    controlnet=None,
    clip=DEMO_CLIP.with_overrides(height=64, width=64),
    steps=3,
    notice="This runs the tiny **random** model: its videos are noise that shows how the app works, not "
    "what InterDyn does (this checkout has no weights/world/). Start the app with `--svd` and `--controlnet` "
    "for trained ones.",
)
TINY_WAN = ModelChoice(
    label="tiny random Wan2.2 TI2V (CPU)",
    svd=None,
    controlnet=None,
    clip=WAN_CLIP.with_overrides(height=64, width=64),
    steps=3,
    notice="This runs a tiny **random** Wan2.2 TI2V with a random branch: its videos are noise that shows how "
    "the app works with the Wan backbone. Start the app with `--wan` and `--controlnet` for trained weights; "
    "the guidance and scheduler settings are SVD's and do not apply to Wan (it samples with its base's own "
    "scheduler).",
    wan="random:wan-tiny",
    backbone="wan",
)
# The built-in world's own trained SVD and converged branch, shipped in the repository (docs/world.md).
WORLD_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "world"
WORLD = ModelChoice(
    label="the built-in world's trained SVD + InterDyn branch (CPU)",
    svd=str(WORLD_WEIGHTS / "svd"),
    controlnet=str(WORLD_WEIGHTS / "branch"),
    clip=DEMO_CLIP.with_overrides(height=64, width=64),
    steps=10,
    notice="This runs the small SVD and branch trained on the built-in world (64x64 clips of discs pushed by "
    "a hand or a sliding object; docs/world.md): draw a driver into one of the world's scenes. Start the app "
    "with `--svd` and `--controlnet` for real SVD and InterDyn weights.",
)
# The model `interdyn app` runs when no weights are named: the world's, where the checkout has them.
DEFAULT_MODEL = WORLD if (WORLD_WEIGHTS / "branch" / "config.json").is_file() else TINY_RANDOM


def _fresh_branch(base: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter], float]:
    """A small branch for the preset ``base``, the parameters to draw at random, and their scale: every
    parameter of an SVD branch; a Wan branch's output projections (its blocks stay the transformer's)."""
    if is_wan_base(base):
        from interdyn.models.wan import WanControlNetModel, get_wan

        wan = get_wan(base)
        branch = WanControlNetModel.from_transformer(
            wan.transformer, conditioning_embedding_out_channels=(8, 8, 8, 16), vae=wan.vae
        )
        outputs = [branch.controlnet_blocks, branch.controlnet_cond_embedding.conv_out]
        return branch, [p for part in outputs for p in part.parameters()], 0.2
    from interdyn.models.controlnet import ControlNetSDVModel
    from interdyn.models.svd import get_svd

    branch = ControlNetSDVModel.from_unet(
        get_svd(base).unet, conditioning_embedding_out_channels=(8, 16, 16, 32)
    )
    return branch, list(branch.parameters()), 0.05


def random_branch(folder: Path, svd: str = "random:tiny", seed: int = 0) -> Path:
    """A control branch for the preset ``svd`` (or a Wan preset) with seeded random weights (non-zero, so
    that the driver changes the video), saved once at ``folder`` for ``interdyn generate --controlnet`` (a
    Wan branch with the base it belongs to)."""
    if (folder / "config.json").is_file():
        return folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        branch, drawn, scale = _fresh_branch(svd)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in drawn:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    if is_wan_base(svd):
        return save_wan_branch(branch, folder, svd)
    return write_folder_atomic(folder, lambda tmp: branch.save_pretrained(tmp, safe_serialization=True))


# ---------------------------------------------------------------------------- inputs
def check_image(image: Any) -> np.ndarray:
    """The first frame as ``(H, W, 3)`` uint8, or one sentence saying why it cannot be one."""
    if image is None:
        raise InputError("pick a first frame: upload an image, take a video's first frame or pick a scene.")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"the first frame must be an RGB image, got an array of shape {array.shape}.")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[..., :3]
    if array.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    h, w = array.shape[:2]
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
        raise InputError(
            f"the first frame is {w}x{h} pixels; use an image between {MIN_SIDE} and {MAX_SIDE} pixels a side."
        )
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise InputError(
            f"the first frame is {w}x{h} pixels, too elongated for a {NUM_FRAMES}-frame clip crop (at most "
            f"{MAX_ASPECT:g}:1)."
        )
    return np.ascontiguousarray(array)


def first_frame_of(path: str | Path) -> np.ndarray:
    """The first frame of an image, a video file or a clip folder (its ``video.*``)."""
    path = Path(str(path).strip()).expanduser()
    if not str(path) or not path.exists():
        raise InputError(f"'{path}' does not exist.")
    if path.is_dir():
        video, _, _ = find_clip_parts(path, None)
        if video.is_dir():
            files = sorted(p for p in video.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"the frame folder '{video}' holds no images.")
            video = files[0]
        path = video
    return check_image(read_image(path))


def painted_mask(layers: list[Any] | None, shape: tuple[int, int]) -> np.ndarray:
    """The union of the painted layers (RGBA: a pixel counts where it is not transparent)."""
    mask = np.zeros(shape, dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.shape[:2] != shape:
            raise InputError(
                f"the painted layer is {layer.shape[1]}x{layer.shape[0]}, the image {shape[1]}x{shape[0]}."
            )
        mask |= layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else np.asarray(layer).any(-1)
    return mask


@dataclass
class Driver:
    """The driver of a run: a mask dragged along a path, or an uploaded mask file."""

    masks: np.ndarray | None = None  # (T, H, W) bool at the first frame's size (a drawn path)
    file: Path | None = None  # a mask video / image / .npz as uploaded
    frames: list[Path] = field(default_factory=list)  # mask images uploaded together: a folder of frames
    points: list[list[float]] = field(default_factory=list)
    speed: float | None = None
    length: int | None = None  # the video's frames when not the clip's (longer: sampled in windows)

    @classmethod
    def drawn(
        cls, mask: np.ndarray, points: list, speed: float | None = None, length: int | None = None
    ) -> Driver:
        """``mask`` dragged along ``points`` over the clip, or over ``length`` frames (``speed`` in pixels
        per frame)."""
        pts = [[float(x), float(y)] for x, y in points]
        masks = drag_mask(mask, pts, length or NUM_FRAMES, speed)
        return cls(masks=masks, points=pts, speed=speed, length=length)

    @classmethod
    def uploaded(cls, files: str | Path | list | None, length: int | None = None) -> Driver:
        """A mask video, a mask image (the same mask on every frame) or a ``.npz``; several mask images
        are a folder of frames (in natural order of their names); ``length``: the frames to take."""
        paths = [Path(f) for f in ([files] if isinstance(files, str | Path) else files or [])]
        if not paths:
            raise InputError("upload a mask video, a mask image or a .npz, or draw a path instead.")
        for path in paths:
            if path.suffix.lower() not in MASK_SUFFIXES:
                raise InputError(
                    f"'{path.name}' is not a mask video, a mask image or a .npz ({', '.join(sorted(MASK_SUFFIXES))})."
                )
        if len(paths) > 1 and any(p.suffix.lower() not in IMAGE_SUFFIXES for p in paths):
            raise InputError(
                "several files are a folder of mask images; upload one video or .npz on its own."
            )
        return cls(file=paths[0], length=length) if len(paths) == 1 else cls(frames=paths, length=length)


# ---------------------------------------------------------------------------- the engine
class Engine:
    """Holds the weights' arguments and, once loaded, the weights; runs previews and generations."""

    def __init__(
        self,
        out: str | Path,
        model: ModelChoice = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        self.out = Path(out).expanduser().resolve()
        self.model = model
        self.device, self.dtype = device, dtype
        self.clip = model.clip.with_overrides(height=height, width=width)  # what every run generates
        self._weights: LoadedWeights | None = None
        self._lock = threading.Lock()  # one generation at a time per process (the UI's queue also waits)

    def weight_args(self) -> list[str]:
        model, controlnet = self.model, self.model.controlnet
        if controlnet is None:
            base = model.wan or model.svd or "random:tiny"
            controlnet = str(random_branch(self.out / f".tiny-random-{model.backbone}-branch", base))
        argv = ["--controlnet", controlnet, "--device", self.device, "--dtype", self.dtype]
        argv += ["--wan", model.wan] if model.wan else []
        return argv + (["--svd", model.svd] if model.svd else [])

    def _write_inputs(self, folder: Path, image: np.ndarray, driver: Driver) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        image_path = write_atomic(folder / "first_frame.png", png_bytes(check_image(image)))
        if driver.masks is not None:
            control = write_atomic(
                folder / "driver.npz", masks_npz_bytes(driver.masks, self.clip.fps or FOLDER_FPS)
            )
            path = {"points": driver.points, "speed_px_per_frame": driver.speed, "frames": len(driver.masks)}
            write_atomic(folder / "driver_path.json", json.dumps(path, indent=2).encode())
        elif driver.file is not None:
            control = folder / f"driver{driver.file.suffix.lower()}"
            if driver.file.resolve() != control.resolve():
                shutil.copyfile(driver.file, control)
        elif driver.frames:
            control = folder / "driver"
            shutil.rmtree(control, ignore_errors=True)
            control.mkdir()
            for path in driver.frames:
                shutil.copyfile(path, control / path.name)
        else:
            raise InputError("make a driver first: paint a mask and draw its path, or upload a mask file.")
        # A drawn driver is written at the clip's rate: the clip takes every one of its frames.
        return ["--image", str(image_path), "--control", str(control)]

    def arguments(self, folder: Path, image: np.ndarray, driver: Driver, **options: Any) -> list[str]:
        """The ``interdyn generate`` command line of a run in ``folder`` (its inputs are written there): the
        engine's clip (its settings that differ from generate's defaults) and ``options`` by name."""
        argv = self._write_inputs(folder, image, driver)
        clip = {k: v for k, v in self.clip.as_kwargs().items() if k != "window"}
        options = {k: v for k, v in clip.items() if v != getattr(DEMO_CLIP, k)} | options
        if driver.length and driver.length != self.clip.num_frames:  # a long video: generate's windows
            options["num_frames"] = driver.length
        argv += ["--out", str(folder), "--name", folder.name]
        for key, value in options.items():
            if value is not None:
                argv += [f"--{key}", str(value)]
        return argv

    def preview(self, image: np.ndarray, driver: Driver) -> GenerationInputs:
        """The image and driver as the model will see them (the command's own preprocessing)."""
        self.out.mkdir(parents=True, exist_ok=True)
        folder = Path(
            tempfile.mkdtemp(prefix=".preview-", dir=self.out)
        )  # one per request: pages may overlap
        try:
            return read_inputs(parse_or_error(self.arguments(folder, image, driver)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def next_run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in self.out.iterdir() if (m := re.fullmatch(r"run(\d+)", p.name))]
        return self.out / f"run{max(taken, default=0) + 1:03d}"

    def generate(
        self,
        image: np.ndarray,
        driver: Driver,
        num_samples: int = 3,
        seed: int = 42,
        **sampling: Any,
    ) -> GenerateResult:
        """Run ``interdyn generate`` on the inputs in a new run folder with the loaded weights; ``sampling``
        holds settings of :class:`~interdyn.models.sampling.SamplingSettings` by name (the rest: the
        checkpoint's, else the paper's; the steps: the model's)."""
        unknown = sorted(set(sampling) - set(SamplingSettings.names()))
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; known: {SamplingSettings.names()}")
        wan_keys = {*WAN_SAMPLING, "continuation"}  # what of the page's settings Wan takes
        sampling = {"num_inference_steps": self.model.steps} | {
            k: v
            for k, v in sampling.items()
            if v is not None and (self.model.backbone != "wan" or k in wan_keys)  # the page's SVD-only
        }
        with self._lock:
            check_image(image)
            folder = self.next_run()
            try:
                argv = self.arguments(
                    folder, image, driver, num_samples=int(num_samples), seed=int(seed), **sampling
                )
                argv += self.weight_args()
                if self.model.backbone == "wan":  # prompt guidance only as `interdyn app` was started
                    given = self.model.prompt
                    argv += [*given, *([] if "--guidance_scale" in given else ["--guidance_scale", "1"])]
                    if sampling.get("continuation", "single") != "single":  # windows of the app's clip
                        window = self.clip.num_frames
                        overlap = min(WAN_OVERLAP, 1 + FRAME_STEP * ((window - 2) // FRAME_STEP))
                        argv += ["--window_frames", str(window), "--window_overlap", str(overlap)]
                args = parse_or_error(argv)
                read_inputs(args)  # bad inputs fail before the weights are loaded
                if self._weights is None:
                    self._weights = load_weights(args)
                result = run_generate(args, self._weights)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # no half-written run in the history
                raise
            command = "interdyn generate " + shlex.join(argv)
            write_atomic(folder / "command.txt", (command + "\n").encode())
            result.paths.append(folder / "command.txt")
            return result


def parse_or_error(argv: list[str]) -> argparse.Namespace:
    """``interdyn generate``'s parser, with its usage errors as InputError instead of SystemExit."""
    parser = build_parser()

    def error(message: str) -> None:
        raise InputError(f"invalid settings: {message}.")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)
