"""The page of ``interdyn app`` (Gradio): first frame, driver, generation, the last runs side by side.

Callbacks only translate between the page and :class:`~interdyn.app.engine.Engine`; a user error becomes
a message in the page (``gr.Error``), never a stack trace, and the server keeps running.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

from interdyn.app.access import ServerFiles
from interdyn.app.drawing import enlarge, overlay, path_canvas, zoom_of
from interdyn.app.engine import (
    NUM_FRAMES,
    Driver,
    Engine,
    ModelChoice,
    check_image,
    first_frame_of,
    painted_mask,
)
from interdyn.app.scenes import Scene, builtin_scenes
from interdyn.commands.generate_wan import FRAME_STEP
from interdyn.errors import InterDynError
from interdyn.models.sampling import CONTINUATIONS, DEFAULT_SAMPLING, SCHEDULERS

log = logging.getLogger(__name__)
HISTORY = 6  # runs kept side by side


def guarded(fn: Callable) -> Callable:
    """A callback whose errors reach the page as one sentence (and the server log, when unexpected)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InterDynError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # the app keeps running: say what failed, log the traceback
            log.exception("callback %s failed", fn.__name__)
            raise gr.Error(f"unexpected error ({type(err).__name__}): {err}", print_exception=False) from None

    return wrapper


def editor_parts(value: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The first frame and the painted mask of the editor's value (either may be None)."""
    if not value or value.get("background") is None:
        return None, None
    image = check_image(value["background"])
    mask = painted_mask(value.get("layers"), image.shape[:2])
    return image, mask


def editor_value(image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """The editor's value showing ``image`` with ``mask`` painted as its one layer."""
    layers = []
    if mask is not None:
        layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
        layer[mask] = (255, 40, 40, 255)
        layers.append(layer)
    return {"background": image, "layers": layers, "composite": None}


# ---------------------------------------------------------------------------- callbacks
def scene_mask(image: np.ndarray | None, mask: np.ndarray | None, frame: tuple | None) -> np.ndarray | None:
    """The painted mask, or the mask of the scene the editor was set to while nothing is painted on its
    image: the editor does not show (nor always send back) a mask layer it was given, only strokes."""
    if image is None or (mask is not None and mask.any()) or not frame or frame[2] is None:
        return mask
    return frame[2] if np.array_equal(image, frame[0]) else mask


def driver_of(
    editor: dict | None,
    frame: tuple | None,
    mode: str,
    points: list,
    speed: float,
    upload: Any,
    length: float | None = None,
) -> Driver:
    """The driver the page describes: the uploaded masks, or the painted mask (or the scene's) dragged
    along the path; over ``length`` frames."""
    length = int(length) if length else None
    if mode == "upload":
        return Driver.uploaded(upload, length)
    image, mask = editor_parts(editor)
    mask = scene_mask(image, mask, frame)
    if image is None:
        raise InterDynError(
            "pick a first frame: upload an image, take a video's first frame or pick a scene."
        )
    return Driver.drawn(mask, points, float(speed) or None, length)


@guarded
def on_editor_change(editor: dict | None, points: list, frame: tuple | None) -> tuple:
    """The new first frame and mask, the path (cleared when the first frame is another image) and the
    path drawn on them."""
    image, mask = editor_parts(editor)
    before = frame[0] if frame else None
    if image is None or before is None or not np.array_equal(image, before):
        points, frame = [], None  # a path belongs to its image (a scene sets its frame first)
    mask = scene_mask(image, mask, frame)
    kept = frame[2] if frame and mask is frame[2] else None  # the scene's mask until something is painted
    # Kept on the server, so that path clicks do not send the editor's images again.
    return (image, mask, kept), points, path_canvas(image, mask, points)


@guarded
def on_path_click(frame: tuple | None, points: list, evt: gr.SelectData) -> tuple:
    """The path with the clicked point added (clamped to the first frame)."""
    image, mask = (frame or (None, None))[:2]
    if image is None:
        raise InterDynError("pick a first frame before drawing a path.")
    zoom = zoom_of(image.shape)
    x, y = evt.index[0] / zoom, evt.index[1] / zoom
    points = [*points, [min(max(x, 0.0), image.shape[1] - 1.0), min(max(y, 0.0), image.shape[0] - 1.0)]]
    return points, path_canvas(image, mask, points)


@guarded
def on_path_edit(frame: tuple | None, points: list, action: str) -> tuple:
    """The path without its last point (``undo``) or without any (``clear``)."""
    points = points[:-1] if action == "undo" else []
    image, mask = (frame or (None, None))[:2]
    return points, path_canvas(image, mask, points)


def on_scrub(frames: list, index: float) -> np.ndarray | None:
    """The preview's frame at the slider."""
    return frames[min(int(index), len(frames) - 1)] if frames else None  # a Wan clip has 13 frames


@guarded
def on_video_file(path: str | None, points: list) -> tuple:
    """The first frame of an uploaded video in the editor, with an empty path."""
    if not path:
        return gr.skip(), gr.skip()
    image = first_frame_of(path)
    return editor_value(image), []


def server_path_callback(files: ServerFiles) -> Callable:
    """The callback that loads the first frame of a path on the server, as ``files`` allows."""

    @guarded
    def on_server_path(text: str | None, points: list) -> tuple:
        image = first_frame_of(files.resolve(text or ""))
        return editor_value(image), []

    return on_server_path


def scene_callback(scenes: dict[str, Scene]) -> Callable:
    """The callback that loads one of ``scenes`` (its first frame, mask and path)."""

    @guarded
    def on_scene(name: str) -> tuple:
        if name not in scenes:
            raise InterDynError("pick one of the built-in scenes.")
        scene = scenes[name]
        frame = (scene.image, scene.mask, scene.mask)  # set first: the editor's change keeps its path
        return frame, editor_value(scene.image, scene.mask), [list(p) for p in scene.points]

    return on_scene


def preview_callback(engine: Engine) -> Callable:
    """The callback that shows the driver as ``engine``'s model will see it."""

    @guarded
    def on_preview(*driver_inputs: Any) -> tuple:
        editor = driver_inputs[0]
        image, _ = editor_parts(editor)
        if image is None:
            raise InterDynError("pick a first frame first.")
        inputs = engine.preview(image, driver_of(*driver_inputs))
        zoom = zoom_of(inputs.image.shape, 256)
        frames = [enlarge(overlay(inputs.image, m), zoom) for m in inputs.controls[0]]
        notes = "\n".join(f"- {n}" for n in [f"timing: {inputs.timing}", *inputs.notes])
        return frames, frames[0], gr.update(value=0, maximum=len(frames) - 1), notes

    return on_preview


def run_caption(run: str, driver: Driver, speed: float, upload: Any, seed: float, steps: float) -> str:
    """The gallery's caption of a run: its driver, seed and steps."""
    what = (
        f"{len(driver.points)}-point path, " + (f"{float(speed):g} px/frame" if speed else "over the clip")
        if driver.masks is not None
        else f"uploaded masks {Path(str(upload[0])).name}"
        + (f" (+{len(upload) - 1})" if len(upload) > 1 else "")
    )
    return f"{run}: {what}, seed {int(seed)}, {int(steps)} steps"


def generate_callback(engine: Engine) -> Callable:
    """The callback that generates with ``engine`` and adds the run to the history."""

    @guarded
    def on_generate(
        editor: dict | None,
        frame: tuple | None,
        mode: str,
        points: list,
        speed: float,
        upload: Any,
        length: float,
        samples: float,
        steps: float,
        scheduler: str,
        min_guidance: float,
        max_guidance: float,
        continuation: str,
        seed: float,
        history: list,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way to ask for it)
    ) -> tuple:
        image, _ = editor_parts(editor)
        if image is None:
            raise InterDynError("pick a first frame first.")
        driver = driver_of(editor, frame, mode, points, speed, upload, length)
        long = bool(driver.length and driver.length > engine.clip.num_frames)
        progress(0, desc="loading the weights and preparing the inputs")
        result = engine.generate(
            image,
            driver,
            int(samples),
            int(seed),
            num_inference_steps=int(steps),
            scheduler=scheduler,
            min_guidance_scale=float(min_guidance),
            max_guidance_scale=float(max_guidance),
            continuation=continuation if long else None,  # a one-window video has nothing to continue
        )
        compare = next(p for p in result.paths if p.name.endswith(("_compare.mp4", "_grid.mp4")))
        run = compare.parent.name
        caption = run_caption(run, driver, speed, upload, seed, steps)
        # The gallery keeps each run's contact sheet (input, control, samples; frames left to right).
        sheet = next(p for p in result.paths if p.name.endswith("_sheet.png"))
        history = [(str(sheet), caption), *history][:HISTORY]
        command = (compare.parent / "command.txt").read_text().strip()
        info = (
            f"**{run}** written to `{compare.parent}`: {len(result.inputs.controls[0])} frames at "
            f"{result.inputs.fps:g} fps.\n\n"
        )
        info += f"The same from a shell:\n```\n{command}\n```"
        files = [str(p) for p in result.paths]
        return str(compare), files, info, history, history

    return on_generate


# ---------------------------------------------------------------------------- the page
def first_frame_panel(scenes: dict[str, Scene], files: ServerFiles) -> dict[str, Any]:
    """Step 1: the editor of the first frame and its mask (showing the first scene, its mask painted),
    and the other ways to get a first frame."""
    first = next(iter(scenes.values()))
    gr.Markdown(
        "### 1. First frame and mask\nThe first built-in scene is loaded, its mask painted and its path "
        "drawn: press *generate*, or upload an image into the editor (or take one below) and paint the "
        "mask of what moves with the brush."
    )
    parts: dict[str, Any] = {}
    parts["editor"] = gr.ImageEditor(
        value=editor_value(first.image, first.mask),
        label="first frame: paint the driver's mask",
        type="numpy",
        image_mode="RGBA",
        format="png",
        sources=("upload", "clipboard"),
        transforms=(),
        layers=False,
        brush=gr.Brush(colors=["#ff2828"], default_color="#ff2828", color_mode="fixed"),
        eraser=gr.Eraser(),
        elem_id="editor",
    )
    with gr.Accordion("or take a built-in scene, a video's first frame or a clip folder's", open=True):
        with gr.Row():
            parts["scene"] = gr.Dropdown(
                choices=list(scenes),
                value=first.name,
                label="built-in world scenes (mask and path included)",
                elem_id="scene",
            )
            parts["scene_button"] = gr.Button("use scene", size="sm", elem_id="use_scene")
        parts["video_file"] = gr.File(
            label="video (its first frame)", file_types=["video"], elem_id="video_file"
        )
        with gr.Row():
            parts["clip_path"] = gr.Textbox(
                label=files.describe(), elem_id="clip_path", interactive=files.enabled
            )
            parts["clip_button"] = gr.Button("load", size="sm", interactive=files.enabled)
    return parts


def driver_panel(scene: Scene, frames: int, length_step: int = 1) -> dict[str, Any]:
    """Step 2: the path drawn on the first frame (``scene``'s at first; or uploaded masks) and the
    driver's preview; the video's length goes from ``frames`` in steps of ``length_step`` (4 on Wan, whose
    clips are 1 + 4k frames)."""
    gr.Markdown(
        "### 2. Driver\nClick points on the image to draw the path the mask is dragged along, "
        "or upload a mask video."
    )
    parts: dict[str, Any] = {}
    parts["mode"] = gr.Radio(
        [("drag the painted mask along the path", "path"), ("uploaded masks", "upload")],
        value="path",
        label="driver",
        elem_id="mode",
    )
    parts["canvas"] = gr.Image(
        value=path_canvas(scene.image, scene.mask, scene.points),
        label="path: click to add points (blue: start)",
        interactive=False,
        elem_id="path_canvas",
        format="png",
    )
    with gr.Row():
        parts["undo"] = gr.Button("undo point", size="sm")
        parts["clear"] = gr.Button("clear path", size="sm", elem_id="clear_path")
    parts["speed"] = gr.Slider(
        0, 40, value=0, step=0.5, label="speed, pixels per frame (0: the whole path over the clip)"
    )
    parts["length"] = gr.Slider(
        frames, 7 * frames, value=frames, step=length_step, elem_id="length",
        label=f"video length, frames (over {frames}: made in overlapping windows, see docs/long.md)",
    )  # fmt: skip
    parts["upload"] = gr.File(
        label="mask video, mask image, .npz or mask frames (driver: uploaded masks)",
        file_count="multiple",
        file_types=[".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".npz", "image"],
    )
    parts["preview_button"] = gr.Button("preview the driver", elem_id="preview")
    parts["preview"] = gr.Image(
        label="driver as the model sees it", interactive=False, elem_id="preview_image"
    )
    parts["scrub"] = gr.Slider(0, NUM_FRAMES - 1, value=0, step=1, label="frame", elem_id="scrub")
    parts["notes"] = gr.Markdown()
    return parts


def generate_panel(model: ModelChoice) -> dict[str, Any]:
    """Steps 3 and 4: the sampling settings, the result with its downloads, and the last runs."""
    gr.Markdown("### 3. Generate")
    parts: dict[str, Any] = {}
    with gr.Row():
        parts["samples"] = gr.Slider(1, 4, value=3, step=1, label="samples", elem_id="samples")
        parts["steps"] = gr.Slider(1, 100, value=model.steps, step=1, label="sampler steps", elem_id="steps")
        parts["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SAMPLING.scheduler, label="sampler")
        parts["min_guidance"] = gr.Number(DEFAULT_SAMPLING.min_guidance_scale, label="guidance, first frame")
        parts["max_guidance"] = gr.Number(DEFAULT_SAMPLING.max_guidance_scale, label="guidance, last frame")
        parts["continuation"] = gr.Dropdown(
            list(CONTINUATIONS), value=DEFAULT_SAMPLING.continuation, label="long videos: windows continue by"
        )
        parts["seed"] = gr.Number(42, label="seed", precision=0)
    parts["go"] = gr.Button("generate", variant="primary", elem_id="generate")
    with gr.Row():
        parts["video"] = gr.Video(
            label="input | control | samples", autoplay=True, loop=True, elem_id="result_video"
        )
        with gr.Column():
            parts["files"] = gr.File(
                label="downloads: MP4s, contact sheet, settings", file_count="multiple", elem_id="downloads"
            )
            parts["info"] = gr.Markdown(elem_id="run_info")
    gr.Markdown("### 4. Counterfactuals: edit the path and generate again; the last runs stay here")
    parts["gallery"] = gr.Gallery(
        label="last runs", columns=2, height="auto", object_fit="contain", elem_id="history"
    )
    return parts


def wire(c: SimpleNamespace, engine: Engine, scenes: dict[str, Scene], files: ServerFiles) -> None:
    """Connect the page's events to the callbacks (``c``: the page's components and states)."""
    driver_inputs = [c.editor, c.frame, c.mode, c.points, c.speed, c.upload, c.length]
    path = [c.points, c.canvas]
    c.editor.change(
        on_editor_change, [c.editor, c.points, c.frame], [c.frame, c.points, c.canvas], show_progress="hidden"
    )
    c.canvas.select(on_path_click, [c.frame, c.points], path, show_progress="hidden")
    c.undo.click(functools.partial(on_path_edit, action="undo"), [c.frame, c.points], path)
    c.clear.click(functools.partial(on_path_edit, action="clear"), [c.frame, c.points], path)
    c.video_file.change(on_video_file, [c.video_file, c.points], [c.editor, c.points])
    c.clip_button.click(server_path_callback(files), [c.clip_path, c.points], [c.editor, c.points])
    c.scene_button.click(scene_callback(scenes), c.scene, [c.frame, c.editor, c.points])
    c.preview_button.click(
        preview_callback(engine), driver_inputs, [c.preview_frames, c.preview, c.scrub, c.notes]
    )
    c.scrub.change(on_scrub, [c.preview_frames, c.scrub], c.preview, show_progress="hidden")
    c.go.click(
        generate_callback(engine),
        [*driver_inputs, c.samples, c.steps, c.scheduler, c.min_guidance, c.max_guidance, c.continuation]
        + [c.seed, c.history],
        [c.video, c.files, c.info, c.history, c.gallery],
        concurrency_limit=1,
        concurrency_id="generate",
    )


def build_ui(engine: Engine, files: ServerFiles | None = None) -> gr.Blocks:
    """The Blocks of the app for ``engine``, opened on the first built-in scene (its mask painted, its path
    drawn: *generate* works at once); ``files``: which server paths the page may read (default: any, for
    a page on this machine only)."""
    files = files or ServerFiles()
    scenes = {scene.name: scene for scene in builtin_scenes()}
    first = next(iter(scenes.values()))
    model = engine.model
    with gr.Blocks(title="InterDyn") as demo:
        gr.Markdown(
            "# InterDyn: draw the driver, watch the world react\n"
            f"Model: **{model.label}**, {engine.clip.width}x{engine.clip.height} pixels, "
            f"{engine.clip.num_frames} frames." + (f"\n\n> {model.notice}" if model.notice else "")
        )
        states = {
            "points": gr.State([list(p) for p in first.points]),
            # (first frame, mask shown, the scene's mask while nothing is painted) as numpy arrays
            "frame": gr.State((first.image, first.mask, first.mask)),
            "history": gr.State([]),
            "preview_frames": gr.State([]),
        }
        with gr.Row():
            with gr.Column():
                first_frame = first_frame_panel(scenes, files)
            with gr.Column():
                step = FRAME_STEP if engine.model.backbone == "wan" else 1
                driver = driver_panel(first, engine.clip.num_frames, step)
        page = SimpleNamespace(**states, **first_frame, **driver, **generate_panel(model))
        wire(page, engine, scenes, files)
    return demo
