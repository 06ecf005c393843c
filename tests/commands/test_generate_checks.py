"""What ``interdyn generate`` and ``interdyn export`` refuse before any work, in one sentence: outputs that
exist (without ``--overwrite``) or would replace an input, an ``--out`` that cannot be written, absurd
sample counts and thresholds; and inputs they now read right (16-bit images, a batch-of-one mask array)
or name right (a folder given as an image, a file given as a clip folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interdyn.commands.export import export_main
from interdyn.commands.generate import generate_main
from interdyn.errors import InputError
from interdyn.inputs import read_image, read_masks

SIZE = 64


@pytest.fixture(scope="module")
def branch(tiny_branch_folder: Path) -> Path:
    return tiny_branch_folder


def scene(folder: Path) -> tuple[Path, Path]:
    """An image and a 14-frame .npz of masks moving right, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    picture[20:40, 10:30] = (220, 180, 140)
    Image.fromarray(picture).save(folder / "scene.png")
    masks = np.zeros((14, SIZE, SIZE), dtype=bool)
    for t in range(14):
        masks[t, 20:40, 10 + 2 * t : 30 + 2 * t] = True
    np.savez_compressed(folder / "hand.npz", control=masks, fps=7.0)
    return folder / "scene.png", folder / "hand.npz"


def run(argv: list[str], capsys: pytest.CaptureFixture, weights: list[str] | None = None) -> tuple[int, str]:
    """``interdyn generate`` on ``argv`` at 64x64, 1 sample of 1 step; the exit code and stderr. Without
    ``weights`` the branch does not exist: a run that reached the weights would say so."""
    weights = weights or ["--svd", "random:tiny", "--controlnet", "/nonexistent/branch"]
    defaults = [*weights, "--height", "64", "--width", "64", "--num_samples", "1", "--steps", "1"]
    code = generate_main([*defaults, "--no_progress", "--device", "cpu", *argv])  # argv's options win
    return code, capsys.readouterr().err


def one_sentence(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------- outputs that exist
def test_existing_outputs_need_overwrite(tmp_path, capsys, tiny_svd_folder, branch):
    image, control = scene(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "scene_sheet.png").write_text("an earlier run's sheet")
    code, err = run(["--image", str(image), "--control", str(control), "--out", str(out)], capsys)
    assert code == 2 and one_sentence(err)
    assert "the output" in err and "scene_sheet.png' already exists; pass --overwrite" in err
    assert (out / "scene_sheet.png").read_text() == "an earlier run's sheet"
    assert sorted(p.name for p in out.iterdir()) == ["scene_sheet.png"]  # nothing else was written

    weights = ["--svd", str(tiny_svd_folder), "--controlnet", str(branch)]
    argv = ["--image", str(image), "--control", str(control), "--out", str(out), "--overwrite"]
    code, err = run(argv, capsys, weights)
    assert code == 0, err
    assert (out / "scene_sheet.png").read_bytes().startswith(b"\x89PNG")
    assert {"scene_s0.mp4", "scene_compare.mp4", "scene_settings.json"} <= {p.name for p in out.iterdir()}


def test_an_output_never_replaces_an_input(tmp_path, capsys):
    """The reported loss: ``--image ow/scene_sheet.png --out ow --name scene`` wrote the sheet over its
    own input. Refused, even with --overwrite."""
    folder = tmp_path / "ow"
    image, control = scene(folder)
    image = image.rename(folder / "scene_sheet.png")
    before = image.read_bytes()
    for extra in ([], ["--overwrite"]):
        argv = ["--image", str(image), "--control", str(control), "--out", str(folder), "--name", "scene"]
        code, err = run(argv + extra, capsys)
        assert code == 2 and one_sentence(err)
        assert "scene_sheet.png' would replace an input of this run" in err
    assert image.read_bytes() == before


# ---------------------------------------------------------------------------- --out that cannot be written
def test_an_out_that_cannot_be_written_fails_before_any_work(tmp_path, capsys):
    image, control = scene(tmp_path / "in")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, err = run(["--image", str(image), "--control", str(control), "--out", str(blocker / "x")], capsys)
    assert code == 2 and one_sentence(err)
    assert f"--out '{blocker / 'x'}' cannot hold the outputs: '{blocker}' is a file" in err
    assert "branch" not in err  # refused before the (missing) weights were looked at

    if os.geteuid() == 0:  # root writes through permission bits; a pseudo file system refuses even root
        read_only = Path("/proc/self/interdyn-out")
    else:
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o555)
    code, err = run(["--image", str(image), "--control", str(control), "--out", str(read_only / "o")], capsys)
    assert code == 2 and one_sentence(err)
    assert "cannot hold the outputs: cannot write in" in err and "branch" not in err


# ---------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--num_samples", "1000000"], "--num_samples must be from 1 to 32"),
        (["--num_samples", "0"], "--num_samples must be from 1 to 32"),
        (["--threshold", "-1"], "--threshold must be none (masks as given) or a whole number from 1 to 255"),
        (["--threshold", "0"], "got 0"),
        (["--threshold", "256"], "got 256"),
    ],
)
def test_bad_counts_and_thresholds(extra, phrase, tmp_path, capsys):
    image, control = scene(tmp_path / "in")
    argv = ["--image", str(image), "--control", str(control), "--out", str(tmp_path / "o")]
    code, err = run(argv + extra, capsys)
    assert code == 2 and one_sentence(err) and phrase in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- inputs read right
def test_a_16_bit_image_keeps_its_picture(tmp_path):
    """A 16-bit grey PNG became a white frame (every value above 255 cut to 255)."""
    ramp = np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    frame = read_image(tmp_path / "deep.png")
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    expected = np.round(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(frame[..., 0], expected)
    assert frame.min() == 0 and frame.max() == 255 and 100 < frame.mean() < 155  # a ramp, not white
    floats = (ramp / 65535.0).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "float.tif")
    assert abs(int(read_image(tmp_path / "float.tif")[..., 0].astype(int).mean()) - 127) <= 1


def test_a_batch_of_one_mask_array_is_read_as_its_frames(tmp_path):
    masks = np.zeros((1, 14, SIZE, 48), dtype=bool)
    masks[0, :, 10:20, 10:20] = True
    np.savez_compressed(tmp_path / "one.npz", control=masks)
    assert read_masks(tmp_path / "one.npz").masks.shape == (14, SIZE, 48)
    np.savez_compressed(tmp_path / "two.npz", control=np.concatenate([masks, masks]))
    with pytest.raises(InputError, match=r"has masks of shape \(2, 14, 64, 48\); expected \(frames"):
        read_masks(tmp_path / "two.npz")


def test_a_folder_as_image_and_a_file_as_clip_are_named_so(tmp_path, capsys):
    image, control = scene(tmp_path / "in")
    code, err = run(["--image", str(tmp_path / "in"), "--control", str(control)], capsys)
    assert code == 2 and one_sentence(err)
    assert "is a folder; give an image file (a clip folder goes to --clip)" in err
    code, err = run(["--clip", str(image)], capsys)
    assert code == 2 and one_sentence(err)
    assert "--clip takes a folder (video.* and mask_<name>.*), but" in err and "is a file" in err


# ---------------------------------------------------------------------------- export
def test_export_never_deletes_its_checkpoint_or_other_files(tmp_path, capsys, monkeypatch):
    """``export --ckpt_path ckpts/last.ckpt --out ckpts --overwrite`` deleted every .ckpt in ckpts/; ``--out .``
    and ``--out ..`` gave tracebacks. All are refused in one sentence, before the checkpoint is read."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("last.ckpt", "epoch=1.ckpt"):
        (ckpts / name).write_bytes(b"a checkpoint")
    monkeypatch.chdir(ckpts)
    cases = [
        (["--out", str(ckpts), "--overwrite"], "holds the checkpoint"),
        (["--out", ".", "--overwrite"], "holds the checkpoint"),
        (["--out", "..", "--overwrite"], "holds the checkpoint"),
        (["--out", "."], "holds the checkpoint"),
    ]
    for extra, phrase in cases:
        assert export_main(["--ckpt_path", "last.ckpt", *extra]) == 2
        err = capsys.readouterr().err
        assert one_sentence(err) and phrase in err, (extra, err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert export_main(["--ckpt_path", "last.ckpt", "--out", str(other), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "notes.txt" in err and "not an exported branch" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=1.ckpt", "last.ckpt"]
    assert (other / "notes.txt").read_text() == "mine"
    assert export_main(["--ckpt_path", "last.ckpt", "--out", str(ckpts / "last.ckpt" / "x")]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "is a file" in err
