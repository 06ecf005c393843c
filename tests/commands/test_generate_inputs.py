"""How `interdyn generate` reads its inputs, written as real files (VP9 mask videos, H.264 clips, mask
image folders, .npz): transformed as training clips are, the authors' example folders through the demo's
preprocessing, masks of other lengths; and bad inputs refused in one sentence with exit code 2. What it
writes: test_generate.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from interdyn.commands.generate import generate, generate_main
from interdyn.data.transforms import joint_transform
from interdyn.errors import InputError
from interdyn.inputs import DEMO_CLIP, load_clip_inputs, load_image_inputs
from interdyn.models import InterDynPipeline
from tests.helpers import (
    SOURCE_FRAMES,
    decoded,
    hand_masks,
    interdyn,
    square_masks,
    write_example,
    write_generate_inputs,
)

SIZE, FRAMES = 64, 14
SMALL = replace(DEMO_CLIP, height=SIZE, width=SIZE)  # the demo's clip, small
MASK_AWARE = replace(SMALL, crop="mask_aware")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input file of the tests."""
    return write_generate_inputs(tmp_path_factory.mktemp("inputs"))


def test_counterfactual_controls_share_one_crop(files):
    """mask_aware centres one window on the union of all controls, so every row sees the same image."""
    paths = [files[k] for k in ("a", "b", "c")]
    inputs = load_image_inputs(files["image"], paths, MASK_AWARE)
    image = np.asarray(Image.open(files["image"]).convert("RGB"))
    union = np.logical_or.reduce([c.any(0) for c in inputs.controls])
    assert union[:, 0].any() and union[:, -1].any()  # a (left) and c (right) both kept in the window
    sources = [square_masks(SOURCE_FRAMES, dx=2)[::2][:FRAMES], square_masks(FRAMES, dx=0, dy=2, x0=50, y0=4)]
    sources.append(square_masks(SOURCE_FRAMES, dx=-2, x0=95)[::2][:FRAMES])
    all_masks = np.concatenate(sources)
    frames, masks = joint_transform(
        np.repeat(image[None], len(all_masks), 0), all_masks, SIZE, SIZE, "mask_aware"
    )
    np.testing.assert_array_equal(inputs.image, frames[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(np.concatenate(inputs.controls), masks.numpy())


def test_image_inputs_are_transformed_like_training_clips(files):
    inputs = load_image_inputs(files["image"], [files["hand"]], MASK_AWARE)
    image = np.asarray(Image.open(files["image"]).convert("RGB"))
    masks = square_masks(SOURCE_FRAMES)[np.arange(FRAMES) * 2]
    frames, control = joint_transform(np.repeat(image[None], FRAMES, 0), masks, SIZE, SIZE, "mask_aware")
    np.testing.assert_array_equal(inputs.image, frames[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(inputs.controls[0], control.numpy())


def image_argv(control: Any, image: Any = "image", controlnet: Any = None) -> Callable[[dict], list[str]]:
    """The argv ``--image ... --control ... [--controlnet ...]`` of a case: each is a key of the ``files``
    fixture or a function of it."""

    def pick(files: dict, what: Any) -> str:
        return str(what(files) if callable(what) else files[what])

    def argv(files: dict) -> list[str]:
        out = ["--image", pick(files, image), "--control", pick(files, control)]
        return out + (["--controlnet", pick(files, controlnet)] if controlnet else [])

    return argv


BAD_INPUTS = {
    "missing image": (image_argv("hand", image=lambda f: f["image"].with_name("nope.png")), "does not exist"),
    "unreadable image": (image_argv("hand", image="broken_image"), "cannot read the image"),
    "unreadable control": (image_argv("broken_control"), "cannot read the control"),
    "missing control": (image_argv(lambda f: f["image"].with_name("x.webm")), "does not exist"),
    "empty masks": (image_argv("empty"), "is empty: none of its 30 frames"),
    "too few frames": (
        image_argv("short"),
        "has 10 frames at 14 fps, but 14 frames at 7 FPS need 27 source frames",
    ),
    "mask size": (image_argv("small"), "is 96x64 pixels but the image 'scene.png' is 120x80"),
    "clip without masks": (lambda f: ["--clip", str(f["bare_clip"])], "has no mask_<name>"),
    "no control": (lambda f: ["--image", str(f["image"])], "--image needs --control"),
    "missing weights": (
        image_argv("hand", controlnet=lambda f: f["image"].with_name("no_branch")),
        "Could not load the InterDyn control branch",
    ),
    "foreign checkpoint": (
        image_argv("hand", controlnet="foreign_ckpt"),
        "is not a checkpoint of an interdyn training run",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_sentence_and_exit_2(case, files, tmp_path, capsys):
    argv, phrase = BAD_INPUTS[case]
    code = generate_main(argv(files) + ["--out", str(tmp_path / "out"), "--svd", "random:tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert phrase in err and err.startswith("interdyn generate: error: ")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_exit_code_as_a_process(files, tmp_path):
    """The one test of the command as a user's process: the installed command's entry point, a user error
    as one sentence on stderr and exit code 2, no traceback. Every other command test calls ``main`` in
    the test's own process."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "interdyn"]
    assert script.value == "interdyn.commands.cli:main"
    result = interdyn(
        "generate", "--image", str(files["image"]), "--control", str(files["short"]), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "need 27 source frames" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- the authors' example folders
def authors_control(mask_video: Path, indices: list[int], height: int, width: int) -> torch.Tensor:
    """The control tensor the authors' demo gives its pipeline for a mask video: the decoded RGB frames at
    ``indices``, resized (short side, torchvision v2 NEAREST) and centre-cropped as uint8, divided by 255
    and normalised to ``2 x - 1`` as diffusers' image processor does: ``(1, T, 3, H, W)`` float32."""
    import torchvision.transforms.v2 as T
    import torchvision.transforms.v2.functional as F2

    frames = torch.from_numpy(decoded(mask_video)[indices]).permute(0, 3, 1, 2)  # uint8 (T, 3, H, W)
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    frames = F2.resize(frames, [int(round(h * scale)), int(round(w * scale))], T.InterpolationMode.NEAREST)
    frames = T.CenterCrop((height, width))(frames)
    return (2.0 * (frames / 255.0) - 1.0)[None]


def test_authors_example_folder_gets_the_demo_preprocessing(
    tmp_path, tiny_svd_folder, tiny_branch_folder, capsys, monkeypatch
):
    """A folder like the released examples (12 fps VP9 of odd width, grey noisy masks, object masks longer
    than the video) goes through with the demo's preprocessing: every 2nd frame from frame 0, resize then
    torchvision's centre crop, the mask video's values as they decode (not binarised), masks resized with
    torchvision's NEAREST, 3 samples, seed 42. The control tensor the pipeline is given is the one the
    authors' preprocessing makes, to the last bit."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from interdyn.data.transforms import resize_to_cover
    from interdyn.inputs import ReadOptions
    from tests.helpers import EXAMPLE_HEIGHT as EH
    from tests.helpers import EXAMPLE_WIDTH as EW

    given: list[torch.Tensor] = []
    real_call = InterDynPipeline.__call__

    def recording_call(self, image, control, *args, **kwargs):  # noqa: ANN001, ANN202
        given.append(torch.as_tensor(control).clone())
        return real_call(self, image, control, *args, **kwargs)

    monkeypatch.setattr(InterDynPipeline, "__call__", recording_call)
    folder = write_example(tmp_path / "examples" / "1234")
    out = tmp_path / "out"
    argv = ["--clip", str(folder), "--controlnet", str(tiny_branch_folder), "--svd", str(tiny_svd_folder)]
    argv += ["--out", str(out), "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--no_progress"]
    result = generate(argv)
    printed = capsys.readouterr().out
    taken = list(range(0, 28, 2))
    assert (
        f"timing: every 2nd frame of 12 fps = 6 fps (uniform stride nearest 7 FPS); source frames {', '.join(map(str, taken))}"
        in printed
    )
    assert "masks: as given" in printed
    assert result.inputs.source_frames == taken and result.inputs.fps == 6.0
    assert result.videos["hand"].shape == (3, FRAMES, SIZE, SIZE, 3)  # the demo's 3 samples
    settings = json.loads((out / "1234_settings.json").read_text())
    assert settings["source_frames"] == taken and settings["seed"] == 42 and settings["crop"] == "center"
    assert settings["num_samples"] == 3 and settings["timing"].startswith("every 2nd frame of 12 fps")
    assert settings["threshold"] == "none"

    # The control the pipeline got: the authors' tensor exactly, grey levels and codec noise included.
    expected = authors_control(folder / "mask_hand.webm", taken, SIZE, SIZE)
    assert (
        len(given) == 1 and given[0].dtype == torch.float32 and given[0].shape == (1, FRAMES, 3, SIZE, SIZE)
    )
    assert torch.equal(given[0], expected)
    soft = np.unique(expected.numpy())
    assert len(soft) > 3 and soft.min() == -1.0 and soft.max() < 1.0  # not binary: 170-grey masks, noise

    # --threshold 128 still binarises: torchvision's NEAREST masks, centre crop rounding (x = 19.5 -> 20).
    binary = load_clip_inputs(folder, clip=SMALL, options=ReadOptions(threshold=128))
    masks = torch.from_numpy(hand_masks(28)[taken])
    new_w = round(EW * SIZE / EH)
    assert (new_w - SIZE) % 2 == 1  # the half-pixel case where the rounding matters
    expected_masks = TF.center_crop(
        TF.resize(masks[:, None].to(torch.uint8), [SIZE, new_w], InterpolationMode.NEAREST), [SIZE, SIZE]
    )[:, 0].bool()
    np.testing.assert_array_equal(binary.controls[0], expected_masks.numpy())
    np.testing.assert_array_equal(np.round(result.inputs.controls[0] * 255) >= 128, expected_masks.numpy())
    video = decoded(folder / "video.webm")[taken]
    frames, _ = resize_to_cover(torch.from_numpy(video).permute(0, 3, 1, 2), masks, SIZE, SIZE)
    expected_frames = TF.center_crop(frames, [SIZE, SIZE]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(result.inputs.truth, expected_frames)
    assert "x=20, y=0" in printed


def test_clip_masks_of_other_lengths(tmp_path):
    """Masks longer than the video are cut at its end; a shorter driver mask cuts the clip; a clip that
    cannot give 14 frames is refused in one sentence."""
    longer = load_clip_inputs(write_example(tmp_path / "longer", hand_frames=40), clip=SMALL)
    assert longer.source_frames == list(range(0, 28, 2))
    assert any("cut at the video's end" in n for n in longer.notes)
    shorter = load_clip_inputs(
        write_example(tmp_path / "shorter", video_frames=34, hand_frames=28), clip=SMALL
    )
    assert shorter.source_frames == list(range(0, 28, 2)) and len(shorter.truth) == FRAMES
    assert any("the clip ends with the mask" in n for n in shorter.notes)
    with pytest.raises(InputError, match=r"\(cut to its mask's length\) has 20 frames at 12 fps"):
        load_clip_inputs(write_example(tmp_path / "short", video_frames=34, hand_frames=20), clip=SMALL)


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--name", "../../x"], "--name '../../x' must be a file name, not a path"),
        (["--name", "sub/x"], "must be a file name"),
        (["--control_fps", ".nan"], "--control_fps must be a positive number"),
        (["--control_fps", "0"], "--control_fps must be a positive number"),
        (["--control_fps", "-12"], "--control_fps must be a positive number"),
    ],
)
def test_bad_name_and_control_fps(extra, phrase, files, tmp_path, capsys):
    argv = ["--image", str(files["image"]), "--control", str(files["hand"]), "--out", str(tmp_path / "o")]
    assert generate_main(argv + extra + ["--svd", "random:tiny"]) == 2
    err = capsys.readouterr().err
    assert phrase in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x_settings.json").exists()


@pytest.mark.parametrize(
    "fps", [np.array("fast"), np.float64("nan"), np.float64(0.0), np.float64(-7.0), np.zeros(2)]
)
def test_npz_fps_must_be_one_positive_number(fps, files, tmp_path, capsys):
    control = tmp_path / "c.npz"
    np.savez_compressed(control, control=square_masks(SOURCE_FRAMES), fps=fps)
    argv = ["--image", str(files["image"]), "--control", str(control), "--out", str(tmp_path / "o")]
    assert generate_main(argv + ["--svd", "random:tiny"]) == 2
    err = capsys.readouterr().err
    assert "it must be one positive number" in err and len(err.strip().splitlines()) == 1
