"""`interdyn generate` and `interdyn export` end to end, with a tiny SVD folder, a tiny branch folder and a
real Lightning checkpoint (one CPU training step), on inputs written as real files (VP9 mask videos,
H.264 clips, mask image folders, .npz)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from interdyn.commands.export import export_checkpoint, export_main
from interdyn.commands.generate import generate, generate_main
from interdyn.data.toy import MovingShapesDataModule
from interdyn.data.transforms import joint_transform
from interdyn.data.video import decode_frames, encode_video, probe_video
from interdyn.errors import InputError
from interdyn.inputs import DEMO_CLIP, load_clip_inputs, load_image_inputs
from interdyn.models import InterDynPipeline, load_controlnet, load_svd
from interdyn.training.checkpoint import read_checkpoint
from interdyn.training.module import InterDynModule
from tests.helpers import REPO_ROOT, TINY_CONTROL_CHANNELS

H, W = 80, 120  # source size: resized and cropped to SIZE x SIZE
SIZE, FRAMES = 64, 14
SMALL = replace(DEMO_CLIP, height=SIZE, width=SIZE)  # the demo's clip, small
MASK_AWARE = replace(SMALL, crop="mask_aware")
SOURCE_FRAMES, SOURCE_FPS = 30, 14.0  # 14 frames at 7 FPS need 27 source frames at 14 fps


def square_masks(num_frames: int, dx: int = 2, dy: int = 0, x0: int = 10, y0: int = 30) -> np.ndarray:
    """(T, H, W) bool: a 20-pixel square moving by (dx, dy) per frame."""
    masks = np.zeros((num_frames, H, W), dtype=bool)
    for t in range(num_frames):
        x, y = x0 + dx * t, y0 + dy * t
        masks[t, y : y + 20, x : x + 20] = True
    return masks


def as_rgb(masks: np.ndarray) -> np.ndarray:
    return np.repeat(masks[..., None].astype(np.uint8) * 255, 3, axis=-1)


def write_mask_video(path: Path, masks: np.ndarray, fps: float = SOURCE_FPS) -> Path:
    path.write_bytes(encode_video(as_rgb(masks), fps, codec="libvpx-vp9"))
    return path


def write_mask_folder(folder: Path, masks: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for t, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{t}.png")
    return folder


def scene_frames(masks: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8: grey background, a blue disc, the driver where the masks are."""
    frames = np.full((len(masks), H, W, 3), 90, dtype=np.uint8)
    frames[:, 40:60, 70:90] = (40, 160, 220)
    frames[masks] = (220, 180, 140)
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input file of the tests."""
    root = tmp_path_factory.mktemp("inputs")
    masks = square_masks(SOURCE_FRAMES)
    Image.fromarray(scene_frames(masks)[0]).save(root / "scene.png")
    f = {"image": root / "scene.png", "hand": write_mask_video(root / "hand.webm", masks)}
    # Counterfactual controls in the three formats: a video, a folder of images (7 fps), a .npz with fps.
    f["a"] = write_mask_video(root / "a.webm", square_masks(SOURCE_FRAMES, dx=2))
    f["b"] = write_mask_folder(root / "b", square_masks(FRAMES, dx=0, dy=2, x0=50, y0=4))
    np.savez_compressed(root / "c.npz", control=square_masks(SOURCE_FRAMES, dx=-2, x0=95), fps=SOURCE_FPS)
    f["c"] = root / "c.npz"
    # A clip folder: H.264 video, driver masks as images, a second object's masks as .npz.
    clip = root / "clips" / "243"
    clip.mkdir(parents=True)
    (clip / "video.mp4").write_bytes(encode_video(scene_frames(masks), SOURCE_FPS))
    write_mask_folder(clip / "mask_hand", masks)
    np.savez_compressed(clip / "mask_cup.npz", control=np.zeros_like(masks))
    f["clip"] = clip
    # Bad inputs.
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "broken.webm").write_bytes(b"this is not a video")
    f["broken_image"], f["broken_control"] = root / "broken.png", root / "broken.webm"
    f["empty"] = write_mask_video(root / "empty.webm", np.zeros((SOURCE_FRAMES, H, W), dtype=bool))
    f["short"] = write_mask_video(root / "short.webm", square_masks(10))
    small = np.zeros((SOURCE_FRAMES, 64, 96), dtype=bool)
    small[:, 20:40, 20:40] = True
    f["small"] = write_mask_video(root / "small.webm", small)
    bare = root / "clips" / "bare"
    bare.mkdir()
    (bare / "video.mp4").write_bytes(encode_video(scene_frames(masks), SOURCE_FPS))
    f["bare_clip"] = bare
    torch.save({"state_dict": {}}, root / "foreign.ckpt")
    f["foreign_ckpt"] = root / "foreign.ckpt"
    return f


@pytest.fixture(scope="module")
def branch_folder(tiny_branch_folder: Path) -> Path:
    return tiny_branch_folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_svd_folder: Path) -> Path:
    """A real checkpoint of this project: one CPU training step on the toy data, saved by Lightning.
    Its hyper-parameters record the SVD folder and sampling settings that generate takes as defaults."""
    root = tmp_path_factory.mktemp("run")
    module = InterDynModule(
        svd=str(tiny_svd_folder),
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        learning_rate=1e-3,
        sampling={"num_inference_steps": 2, "motion_bucket_id": 30, "scheduler": "dpmpp_2m"},
    )
    data = MovingShapesDataModule(num_train=2, num_val=1, num_test=1, num_frames=4, batch_size=1)
    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, default_root_dir=root, **quiet)
    with warnings.catch_warnings():  # the frozen parts are in eval mode on purpose
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def common(
    tiny_svd_folder: Path, branch: Path | str, out: Path, svd: bool = True, samples: int = 1
) -> list[str]:
    args = ["--controlnet", str(branch), "--out", str(out), "--height", str(SIZE), "--width", str(SIZE)]
    args += ["--num_samples", str(samples)]
    args += ["--no_progress"] + (["--svd", str(tiny_svd_folder), "--steps", "2"] if svd else [])
    return args


def decoded(path: Path) -> np.ndarray:
    return decode_frames(path.read_bytes())


def test_image_and_mask_video(tmp_path, files, tiny_svd_folder, branch_folder, capsys):
    out = tmp_path / "out"
    result = generate(
        ["--image", str(files["image"]), "--control", str(files["hand"])]
        + common(tiny_svd_folder, branch_folder, out, samples=2)
    )
    printed = capsys.readouterr().out
    assert "timing: every 2nd frame of 14 fps = 7 fps (uniform stride nearest 7 FPS)" in printed
    assert "center crop (default" in printed
    assert "scene_compare.mp4" in printed and str(out) in printed

    videos = result.videos["hand"]
    assert videos.shape == (2, FRAMES, SIZE, SIZE, 3) and videos.dtype == np.uint8
    assert not np.array_equal(videos[0], videos[1])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["scene_s0.mp4", "scene_s1.mp4", "scene_compare.mp4", "scene_sheet.png", "scene_settings.json"]
    )
    for k in range(2):
        sample = decoded(out / f"scene_s{k}.mp4")
        assert sample.shape == (FRAMES, SIZE, SIZE, 3)
        assert np.abs(sample.astype(float) - videos[k]).mean() < 12  # the same video, through H.264
        assert probe_video((out / f"scene_s{k}.mp4").read_bytes())[1] == pytest.approx(7.0)
    compare = decoded(out / "scene_compare.mp4")
    assert compare.shape[0] == FRAMES and compare.shape[2] == 4 * SIZE  # input | control | 2 samples
    assert compare.shape[1] > SIZE  # the label strip above the panels
    label_h = compare.shape[1] - SIZE
    control_panel = compare[:, label_h:, SIZE : 2 * SIZE].mean(-1) > 128
    assert control_panel.mean() == pytest.approx(result.inputs.controls[0].mean(), abs=0.02)
    with Image.open(out / "scene_sheet.png") as sheet:
        assert sheet.width > FRAMES * SIZE and sheet.height > 4 * SIZE  # 14 columns; 4 rows
    settings = json.loads((out / "scene_settings.json").read_text())
    assert settings["seed"] == 42 and settings["sampling"]["num_inference_steps"] == 2
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_same_seed_same_video(tmp_path, files, tiny_svd_folder, branch_folder):
    def run(seed: int, out: Path) -> np.ndarray:
        argv = ["--image", str(files["image"]), "--control", str(files["hand"]), "--seed", str(seed)]
        return generate(argv + common(tiny_svd_folder, branch_folder, out)).videos["hand"]

    first, again, other = run(7, tmp_path / "1"), run(7, tmp_path / "2"), run(8, tmp_path / "3")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The written files hold the same video; libx264 is not always bit-exact between two encodes of the
    # same frames on a loaded machine, so the files are compared through the codec's error.
    a, b = decoded(tmp_path / "1" / "scene_s0.mp4"), decoded(tmp_path / "2" / "scene_s0.mp4")
    assert a.shape == b.shape and np.abs(a.astype(float) - b).mean() < 2


def test_clip_folder_with_ground_truth(tmp_path, files, tiny_svd_folder, branch_folder, capsys):
    out = tmp_path / "out"
    result = generate(["--clip", str(files["clip"])] + common(tiny_svd_folder, branch_folder, out))
    assert "mask_hand" in capsys.readouterr().out  # the hand was chosen over the cup
    inputs = result.inputs
    assert inputs.name == "243" and inputs.labels == ["hand"]
    # Ground truth: the video's frames at 7 FPS (every 2nd of 14 fps), through the demo's centre crop.
    video = decoded(files["clip"] / "video.mp4")
    masks = square_masks(SOURCE_FRAMES)
    indices = np.arange(FRAMES) * 2
    truth, control = joint_transform(video[indices], masks[indices], SIZE, SIZE, "center")
    np.testing.assert_array_equal(inputs.truth, truth.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(inputs.controls[0], control.numpy())
    np.testing.assert_array_equal(inputs.image, inputs.truth[0])

    assert result.videos["hand"].shape == (1, FRAMES, SIZE, SIZE, 3)
    assert decoded(out / "243_s0.mp4").shape == (FRAMES, SIZE, SIZE, 3)
    compare = decoded(out / "243_compare.mp4")
    assert compare.shape[0] == FRAMES and compare.shape[2] == 4 * SIZE  # input | control | sample | truth
    truth_panel = compare[:, compare.shape[1] - SIZE :, 3 * SIZE :].astype(float)
    assert np.abs(truth_panel - inputs.truth).mean() < 12
    assert (out / "243_sheet.png").is_file()


def test_counterfactual_grid(tmp_path, files, tiny_svd_folder, branch_folder):
    out = tmp_path / "cf"
    controls = [str(files[k]) for k in ("a", "b", "c")]
    argv = ["--image", str(files["image"]), "--crop", "center"]
    result = generate(argv + ["--control", *controls] + common(tiny_svd_folder, branch_folder, out))
    assert list(result.videos) == ["a", "b", "c"]
    for label in ("a", "b", "c"):
        assert decoded(out / f"scene_{label}_s0.mp4").shape == (FRAMES, SIZE, SIZE, 3)
    assert not np.array_equal(result.videos["a"], result.videos["b"])  # the masks make the difference
    grid = decoded(out / "scene_cf_grid.mp4")
    row_h = grid.shape[1] // 3
    assert grid.shape[0] == FRAMES and grid.shape[1] == 3 * row_h and row_h > SIZE
    assert grid.shape[2] == 3 * SIZE  # input | control | sample, one row per control
    with Image.open(out / "scene_cf_sheet.png") as sheet:
        assert sheet.height > 7 * SIZE  # input + 3 x (control, sample)
    # Every row starts from the same noise: a row is exactly what generating its control alone gives.
    alone = generate(
        argv + ["--control", str(files["b"])] + common(tiny_svd_folder, branch_folder, tmp_path / "alone")
    )
    np.testing.assert_array_equal(alone.videos["b"], result.videos["b"])


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


def test_export_then_generate_matches_the_checkpoint(tmp_path, files, tiny_svd_folder, checkpoint, capsys):
    exported = tmp_path / "my_controlnet"
    assert export_main(["--ckpt_path", str(checkpoint), "--out", str(exported)]) == 0
    printed = capsys.readouterr().out
    assert f"interdyn generate --controlnet {exported} --svd {tiny_svd_folder}" in printed
    assert sorted(p.name for p in exported.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert json.loads((exported / "config.json").read_text())["residual_addition"] == "single"

    # The exported folder holds exactly the checkpoint's branch (never folded as a released one).
    state = read_checkpoint(checkpoint)["state_dict"]
    branch = load_controlnet(str(exported))
    for key, value in branch.state_dict().items():
        torch.testing.assert_close(value, state[f"controlnet.{key}"], rtol=0, atol=0)
    assert InterDynPipeline.from_components(load_svd(str(tiny_svd_folder)), branch) is not None

    inputs = ["--image", str(files["image"]), "--control", str(files["hand"])]
    # From the .ckpt: the SVD folder, the steps and the motion bucket come from its hyper-parameters.
    from_ckpt = generate(inputs + common(tiny_svd_folder, checkpoint, tmp_path / "a", svd=False))
    recorded = from_ckpt.settings
    assert (recorded["num_inference_steps"], recorded["motion_bucket_id"], recorded["scheduler"]) == (
        2,
        30,
        "dpmpp_2m",
    )
    from_folder = generate(
        inputs
        + common(tiny_svd_folder, exported, tmp_path / "b")
        + ["--motion_bucket_id", "30", "--scheduler", "dpmpp_2m"]
    )
    np.testing.assert_array_equal(from_ckpt.videos["hand"], from_folder.videos["hand"])

    # An existing, non-empty output is refused; --overwrite replaces it atomically.
    assert export_main(["--ckpt_path", str(checkpoint), "--out", str(exported)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert export_checkpoint(checkpoint, exported, dtype="bfloat16", overwrite=True) == exported
    with safe_open(exported / "diffusion_pytorch_model.safetensors", "pt") as saved:
        assert saved.get_tensor("conv_in.weight").dtype == torch.bfloat16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


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
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = "import sys; from interdyn.commands.generate import generate_main; sys.exit(generate_main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "--image", str(files["image"]), "--control", str(files["short"])],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "need 27 source frames" in result.stderr and "Traceback" not in result.stderr


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
    tmp_path, tiny_svd_folder, branch_folder, capsys, monkeypatch
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
    from tests.helpers import hand_masks, write_example

    given: list[torch.Tensor] = []
    real_call = InterDynPipeline.__call__

    def recording_call(self, image, control, *args, **kwargs):  # noqa: ANN001, ANN202
        given.append(torch.as_tensor(control).clone())
        return real_call(self, image, control, *args, **kwargs)

    monkeypatch.setattr(InterDynPipeline, "__call__", recording_call)
    folder = write_example(tmp_path / "examples" / "1234")
    out = tmp_path / "out"
    argv = ["--clip", str(folder), "--controlnet", str(branch_folder), "--svd", str(tiny_svd_folder)]
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
    from tests.helpers import write_example

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
