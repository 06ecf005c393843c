"""`interdyn generate` and `interdyn export` end to end, with a tiny SVD folder, a tiny branch folder and a
real Lightning checkpoint (one CPU training step): what they write (samples, comparison videos, sheets,
settings, counterfactual grids, exported branches) and that it is reproducible. How the inputs are read and
refused: test_generate_inputs.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from interdyn.commands.export import export_checkpoint, export_main
from interdyn.commands.generate import generate
from interdyn.data.toy import MovingShapesDataModule
from interdyn.data.transforms import joint_transform
from interdyn.data.video import probe_video
from interdyn.models import InterDynPipeline, load_controlnet, load_svd
from interdyn.training.checkpoint import read_checkpoint
from interdyn.training.module import InterDynModule
from tests.helpers import (
    SOURCE_FRAMES,
    TINY_CONTROL_CHANNELS,
    decoded,
    square_masks,
    write_generate_inputs,
)

SIZE, FRAMES = 64, 14


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input file of the tests."""
    return write_generate_inputs(tmp_path_factory.mktemp("inputs"))


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
