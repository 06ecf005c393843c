"""The app's engine on the Wan2.2 TI2V backbone (the tiny random Wan with a random branch): a run is
``interdyn generate``'s Wan path, the page's SVD-only settings do not reach it, and ``interdyn app --wan``
builds such an engine."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from interdyn.app.engine import TINY_WAN, WAN_CLIP, Driver, Engine, random_branch
from interdyn.app.main import AppOptions, check_size, make_engine
from interdyn.commands.generate import generate
from interdyn.errors import InputError
from tests.app.test_engine import picture, square_mask

SIZE, FRAMES = 32, 5  # the smallest Wan clip of two latent frames


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    model = TINY_WAN.__class__(**{**TINY_WAN.__dict__, "clip": WAN_CLIP.with_overrides(num_frames=FRAMES)})
    return Engine(tmp_path_factory.mktemp("runs"), model, device="cpu", height=SIZE, width=SIZE)


def test_a_wan_run_is_interdyn_generate(engine: Engine, tmp_path: Path) -> None:
    driver = Driver.drawn(square_mask(), [(48, 24), (12, 24)])
    # The page always sends its guidance and scheduler; they are SVD's and are left out for Wan.
    result = engine.generate(
        picture(), driver, 1, 7, num_inference_steps=2, scheduler="euler", max_guidance_scale=2.5
    )
    run = engine.out / "run001"
    assert result.videos["driver"].shape == (1, FRAMES, SIZE, SIZE, 3)
    settings = json.loads((run / "run001_settings.json").read_text())
    assert settings["backbone"] == "wan" and settings["wan"] == "random:wan-tiny"
    assert settings["sampling"] == {
        "num_inference_steps": 2,
        "conditioning_scale": 1.0,
        "guidance_scale": 1.0,
    }
    branch = Path(settings["controlnet"])
    assert json.loads((branch / "interdyn_base.json").read_text())["base"] == "random:wan-tiny"
    # The run's command line, from a shell, gives the same frames.
    argv = shlex.split((run / "command.txt").read_text())[2:]
    assert "--scheduler" not in argv and "--wan" in argv
    assert argv[argv.index("--guidance_scale") + 1] == "1"  # a branch's recorded prompt guidance is not used
    argv[argv.index("--out") + 1] = str(tmp_path)
    again = generate(argv + ["--no_progress"])
    np.testing.assert_array_equal(again.videos["driver"], result.videos["driver"])


def test_interdyn_app_takes_a_wan_base(tmp_path: Path) -> None:
    tiny = make_engine(AppOptions(wan="random:wan-tiny", out=str(tmp_path)))
    assert tiny.model == TINY_WAN and tiny.clip.num_frames == 13 and tiny.device == "cpu"
    named = make_engine(AppOptions(wan="checkpoints/wan", controlnet="my_branch/", out=str(tmp_path)))
    assert named.model.backbone == "wan" and named.clip == WAN_CLIP
    assert named.weight_args()[:2] == ["--controlnet", "my_branch/"] and "--wan" in named.weight_args()
    svd = make_engine(AppOptions(svd="random:tiny", out=str(tmp_path)))
    assert svd.model.backbone == "svd"
    # A Wan branch alone (it names its base) is found as Wan, so the page's SVD settings stay out.
    branch = random_branch(tmp_path / "branch", "random:wan-tiny")
    alone = make_engine(AppOptions(controlnet=str(branch), out=str(tmp_path)))
    assert alone.model.backbone == "wan" and alone.model.wan is None and alone.clip == WAN_CLIP


def test_the_app_refuses_a_wan_size_in_one_sentence(tmp_path: Path) -> None:
    wan = make_engine(AppOptions(wan="random:wan-tiny", out=str(tmp_path)))
    with pytest.raises(InputError, match="--height must be a positive multiple of 32, got 48"):
        check_size(wan, AppOptions(height=48))
    check_size(make_engine(AppOptions(out=str(tmp_path))), AppOptions(height=48))  # SVD: multiples of 8
    with pytest.raises(InputError, match="--steps must be at least 1"):
        make_engine(AppOptions(wan="random:wan-tiny", steps=0))


def test_a_long_path_on_wan_is_made_in_windows_of_the_app_clip(engine: Engine) -> None:
    """A driver longer than the app's Wan clip, with the page's continuation: ``interdyn generate`` samples it
    in windows of that clip (``--window_frames``), as the page's length slider says; the run records them."""
    frames = FRAMES + 4  # the slider's next length on Wan (its clips are 1 + 4k frames)
    driver = Driver.drawn(square_mask(), [(48, 24), (4, 24)], length=frames)
    result = engine.generate(picture(), driver, 1, 3, num_inference_steps=1, continuation="hold")
    assert result.videos["driver"].shape[:2] == (1, frames)
    run = sorted(engine.out.glob("run*"))[-1]
    settings = json.loads((run / f"{run.name}_settings.json").read_text())
    assert (settings["continuation"], settings["model_window"], settings["windows"]) == (
        "hold",
        5,
        [[0, 5], [4, 9]],
    )
    argv = shlex.split((run / "command.txt").read_text())
    assert (
        argv[argv.index("--window_frames") + 1] == str(FRAMES)
        and argv[argv.index("--window_overlap") + 1] == "1"
    )


def test_the_page_length_slider_keeps_wan_clips_whole(tmp_path: Path) -> None:
    from interdyn.app.ui import build_ui

    sliders = {}
    for model in (TINY_WAN, None):
        engine = (
            Engine(tmp_path / str(model), model, device="cpu") if model else Engine(tmp_path, device="cpu")
        )
        demo = build_ui(engine)
        length = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "length")
        sliders[engine.model.backbone] = (length.minimum, length.step)
    assert sliders == {"wan": (13, 4), "svd": (14, 1)}  # Wan: 13, 17, 21, ... frames (1 + 4k)


def test_interdyn_app_takes_wans_prompt_options(tmp_path: Path) -> None:
    """``interdyn app --wan ... --prompt_embeds --guidance_scale --negative_prompt_embeds``: every run is
    generate's with those options; guidance without a negative embedding (or the reverse), and prompt
    options for SVD, are one sentence at start."""
    import torch

    from interdyn.models.wan import save_prompt_embeds

    noise = torch.Generator().manual_seed(0)
    for name in ("prompt", "negative"):
        save_prompt_embeds(torch.randn(1, 8, 32, generator=noise), tmp_path / f"{name}.safetensors")
    files = {"prompt_embeds": str(tmp_path / "prompt.safetensors")}
    negative = str(tmp_path / "negative.safetensors")
    options = AppOptions(
        wan="random:wan-tiny", out=str(tmp_path / "runs"), height=SIZE, width=SIZE, guidance_scale=3.0,
        negative_prompt_embeds=negative, **files,
    )  # fmt: skip
    model = make_engine(options).model  # as the command builds it, at the smallest Wan clip
    small = Engine(
        options.out,
        replace(model, clip=model.clip.with_overrides(num_frames=FRAMES)),
        device="cpu",
        height=SIZE,
        width=SIZE,
    )
    small.generate(picture(), Driver.drawn(square_mask(), [(48, 24), (12, 24)]), 1, 7, num_inference_steps=1)
    settings = json.loads((small.out / "run001" / "run001_settings.json").read_text())
    assert settings["sampling"]["guidance_scale"] == 3.0 and settings["negative_prompt_embeds"] == negative
    assert settings["prompt_embeds"] == files["prompt_embeds"]
    for wrong, words in [
        ({"guidance_scale": 3.0}, "needs --negative_prompt_embeds"),
        ({"negative_prompt_embeds": negative}, "add --guidance_scale above 1"),
    ]:
        with pytest.raises(InputError, match=words):
            make_engine(AppOptions(wan="random:wan-tiny", out=str(tmp_path), **wrong))
    with pytest.raises(InputError, match="--prompt_embeds is for the Wan backbone"):
        make_engine(AppOptions(svd="random:tiny", out=str(tmp_path), **files))
