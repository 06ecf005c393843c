"""The app's callbacks without the browser: a thin layer over ``interdyn generate`` on the tiny model."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from interdyn.app.engine import NUM_FRAMES, Driver, Engine, check_image, first_frame_of, painted_mask
from interdyn.app.scenes import builtin_scenes
from interdyn.commands.generate import clip_spec, generate, sampling_settings
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.video import decode_frames, encode_video
from interdyn.errors import InputError, InterDynError
from interdyn.inputs import DEMO_CLIP


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    image = np.full((h, w, 3), (90, 110, 140), dtype=np.uint8)
    image[16:32, 40:56] = (220, 60, 50)
    return image


def square_mask(h: int = 48, w: int = 64) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[16:32, 40:56] = True
    return mask


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(tmp_path_factory.mktemp("runs"), device="cpu")


def test_generate_is_interdyn_generate(engine: Engine, tmp_path: Path) -> None:
    """A run's videos are those of its own command line: same preprocessing, seed and files."""
    driver = Driver.drawn(square_mask(), [(48, 24), (12, 24)])
    result = engine.generate(picture(), driver, num_samples=1, seed=7, num_inference_steps=2)
    run = engine.out / "run001"
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(
        ["first_frame.png", "driver.npz", "driver_path.json", "run001_s0.mp4", "run001_compare.mp4"]
        + ["run001_sheet.png", "run001_settings.json", "command.txt"]
    )
    assert result.videos["driver"].shape == (1, 14, 64, 64, 3)
    settings = json.loads((run / "run001_settings.json").read_text())
    assert settings["seed"] == 7 and settings["sampling"]["num_inference_steps"] == 2
    # The same command from a shell (into another folder) gives the same frames.
    argv = shlex.split((run / "command.txt").read_text())[2:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    again = generate(argv + ["--no_progress"])
    np.testing.assert_array_equal(again.videos["driver"], result.videos["driver"])
    # Another path (a counterfactual) changes the video; the next run gets its own folder.
    other = engine.generate(
        picture(), Driver.drawn(square_mask(), [(48, 24), (48, 4)]), 1, 7, num_inference_steps=2
    )
    assert (engine.out / "run002" / "run002_compare.mp4").is_file()
    assert not np.array_equal(other.videos["driver"], result.videos["driver"])
    frames = decode_frames((run / "run001_compare.mp4").read_bytes())
    assert frames.shape[0] == 14


def test_the_app_clip_and_sampling_reach_the_command_line(tmp_path: Path) -> None:
    """The app's clip is generate's demo clip at the model's size (the app's --height/--width win), passed
    whole; its sampling settings go by SamplingSettings' names."""
    from interdyn.app.engine import DEFAULT_MODEL, parse_or_error

    assert NUM_FRAMES == PAPER_CLIP.num_frames
    engine = Engine(tmp_path / "runs", device="cpu", width=96)
    assert engine.clip == DEFAULT_MODEL.clip.with_overrides(width=96)
    driver = Driver.drawn(square_mask(), [(48, 24), (12, 24)])
    argv = engine.arguments(
        tmp_path / "run", picture(), driver, max_guidance_scale=2.5, num_inference_steps=3
    )
    args = parse_or_error(argv)
    assert clip_spec(args) == engine.clip.with_overrides(window=DEMO_CLIP.window)
    settings = sampling_settings(args, {})
    assert (settings.max_guidance_scale, settings.num_inference_steps) == (2.5, 3)
    with pytest.raises(TypeError, match="unknown sampling settings"):
        engine.generate(picture(), driver, warp=2)


def test_preview_is_what_the_model_sees(engine: Engine) -> None:
    inputs = engine.preview(picture(), Driver.drawn(square_mask(), [(48, 24), (12, 24)], speed=1.0))
    assert inputs.image.shape == (64, 64, 3) and inputs.controls[0].shape == (14, 64, 64)
    xs = [np.nonzero(m)[1].mean() for m in inputs.controls[0]]
    assert xs[0] > xs[-1]  # dragged to the left
    assert any("center crop" in note for note in inputs.notes)


def test_uploaded_mask_video(engine: Engine, tmp_path: Path) -> None:
    masks = np.zeros((28, 48, 64, 3), dtype=np.uint8)
    for t in range(28):
        masks[t, 10:30, 5 + t : 20 + t] = 255
    (tmp_path / "hand.mp4").write_bytes(encode_video(masks, 14.0))
    inputs = engine.preview(picture(), Driver.uploaded(tmp_path / "hand.mp4"))
    assert any("every 2nd frame of 14 fps" in note for note in inputs.notes)  # the command's resampling


def test_uploaded_mask_frames_are_a_folder(engine: Engine, tmp_path: Path) -> None:
    from PIL import Image

    for t in range(14):
        frame = np.zeros((48, 64), dtype=np.uint8)
        frame[10:30, 2 * t : 2 * t + 12] = 255
        Image.fromarray(frame).save(tmp_path / f"mask_{t}.png")  # natural order: mask_2 before mask_10
    files = sorted(tmp_path.glob("*.png"))  # as a browser may send them: mask_0, mask_1, mask_10, ...
    inputs = engine.preview(picture(), Driver.uploaded(files))
    xs = [np.nonzero(m)[1].min() for m in inputs.controls[0]]
    assert len(xs) == 14 and xs == sorted(xs) and xs[-1] > xs[0]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: check_image(None), "pick a first frame"),
        (lambda: check_image(np.zeros((4, 300, 3), np.uint8)), "between 16 and 4096"),
        (lambda: check_image(np.zeros((40, 400, 3), np.uint8)), "too elongated"),
        (lambda: check_image(np.zeros((40, 40, 2), np.uint8)), "RGB image"),
        (lambda: Driver.drawn(np.zeros((48, 64), bool), [(0, 0), (5, 5)]), "paint a mask"),
        (lambda: Driver.drawn(square_mask(), []), "at least two points"),
        (lambda: Driver.uploaded(None), "upload a mask video"),
        (lambda: Driver.uploaded("notes.txt"), "is not a mask video"),
        (lambda: Driver.uploaded(["a.png", "b.mp4"]), "several files"),
        (lambda: first_frame_of("/nonexistent/clip"), "does not exist"),
        (lambda: painted_mask([np.zeros((10, 10, 4), np.uint8)], (48, 64)), "painted layer"),
    ],
)
def test_bad_inputs_are_one_sentence(make, words: str) -> None:
    with pytest.raises(InputError, match=words):
        make()


def test_missing_weights_are_one_sentence(tmp_path: Path) -> None:
    from interdyn.app.engine import ModelChoice

    small = DEMO_CLIP.with_overrides(height=64, width=64)
    model = ModelChoice("missing", "random:tiny", str(tmp_path / "no_branch"), small, 2)
    engine = Engine(tmp_path / "runs", model, device="cpu")
    with pytest.raises(InterDynError, match="no_branch"):
        engine.generate(picture(), Driver.drawn(square_mask(), [(48, 24), (12, 24)]), 1)
    assert not any((tmp_path / "runs").glob("run*"))  # no half-written run


def test_builtin_scenes_are_world_first_frames() -> None:
    scenes = builtin_scenes()
    assert len(scenes) == 6 and len({s.image.tobytes() for s in scenes}) == 6
    for scene in scenes:
        assert scene.image.shape == (128, 128, 3) and scene.mask.any() and len(scene.points) == 2
        Driver.drawn(scene.mask, scene.points)  # a usable driver as given


def test_first_frame_of_a_video_and_a_clip_folder(tmp_path: Path) -> None:
    frames = np.zeros((4, 48, 64, 3), dtype=np.uint8)
    frames[0, :, :32] = 200  # the first frame: bright left half
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "video.mp4").write_bytes(encode_video(frames, 12.0))
    (clip / "mask_hand.mp4").write_bytes(encode_video(frames, 12.0))
    for source in (clip / "video.mp4", clip):
        first = first_frame_of(source)
        assert first.shape == (48, 64, 3)
        assert first[:, :28].mean() > 150 and first[:, 36:].mean() < 50


def test_app_command_errors_are_one_sentence(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("gradio", reason="the app's extra is not installed (pip install -e '.[app]')")
    from interdyn.app.main import app_main

    assert app_main(["--height", "60"]) == 2
    assert "--height must be a positive multiple of 8" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert app_main(["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_the_steps_the_page_starts_with_are_an_option(tmp_path):
    from interdyn.app.engine import DEFAULT_MODEL
    from interdyn.app.main import AppOptions, make_engine

    assert make_engine(AppOptions(out=str(tmp_path))).model.steps == DEFAULT_MODEL.steps
    engine = make_engine(AppOptions(out=str(tmp_path), steps=4))
    assert engine.model.steps == 4 and engine.model.svd == DEFAULT_MODEL.svd
    with pytest.raises(InputError, match="--steps must be at least 1"):
        make_engine(AppOptions(out=str(tmp_path), steps=0))
