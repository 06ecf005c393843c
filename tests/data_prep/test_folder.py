"""Folder preparer: clip folders with videos and mask videos / image folders -> shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import folder
from interdyn.data.media import binarize
from interdyn.data.video import decode_frames
from tests.helpers import H, W, iou, load_masks, moving_square_video, read_shards, write_video

T = 30


def mask_frames(masks: np.ndarray) -> np.ndarray:
    return np.repeat(masks[..., None].astype(np.uint8) * 255, 3, axis=-1)


def write_pngs(path: Path, frames: np.ndarray) -> None:
    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i}.png")  # natural order: 2.png before 10.png


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    frames, masks = moving_square_video(T)
    cup = np.zeros_like(masks)
    cup[:, 40:60, 60:80] = True

    write_video(root / "a1" / "video.mp4", frames, 12)
    write_video(root / "a1" / "mask_hand.mp4", mask_frames(masks), 12, codec="libvpx-vp9")  # lossy mask video
    write_pngs(root / "a1" / "mask_cup", mask_frames(cup))

    write_video(root / "b2" / "video.webm", frames, 12, codec="libvpx-vp9")
    write_pngs(root / "b2" / "mask_hand", mask_frames(masks[:, ::2, ::2]))  # half size: resized

    write_pngs(root / "c3" / "video", frames[:, :63, :95])  # odd size frame folder: re-encoded, padded
    write_pngs(root / "c3" / "mask_hand", mask_frames(masks[:, :63, :95]))

    write_video(root / "d4" / "video.mp4", frames, 12)
    write_pngs(root / "d4" / "mask_hand", mask_frames(masks[:20]))  # too few mask frames
    write_video(root / "e5" / "video.mp4", frames, 12)
    write_pngs(root / "e5" / "mask_cup", mask_frames(cup))  # no driver mask
    write_video(root / "f6" / "video.mp4", frames, 12)
    write_pngs(root / "f6" / "mask_hand", mask_frames(np.zeros_like(masks)))  # empty driver
    write_video(root / "g7" / "video.mp4", frames, 12)
    write_pngs(root / "g7" / "mask_hand", mask_frames(masks[:, :, :64]))  # other aspect ratio
    (root / "h8").mkdir()
    write_pngs(root / "h8" / "mask_hand", mask_frames(masks))  # no video
    write_video(root / "i9" / "video.mp4", frames[:10], 12)  # too short
    write_pngs(root / "i9" / "mask_hand", mask_frames(masks[:10]))
    return root


def test_folder_end_to_end(clips, tmp_path):
    out = tmp_path / "mine"
    assert (
        folder.main(
            [
                "--input",
                str(clips),
                "--out",
                str(out),
                "--fps",
                "12",
                "--workers",
                "2",
                "--shard_size",
                "4",
                "--no_progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["skipped"] == {
        "missing_masks": 1,
        "empty_masks": 1,
        "mask_size_mismatch": 1,
        "missing_video": 1,
        "too_short": 2,  # i9, and d4, whose 20-frame driver mask cuts its clip below 27 frames
    }
    samples = read_shards(out / "train")
    assert sorted(samples) == ["folder-a1", "folder-b2", "folder-c3"]
    _, truth = moving_square_video(T)

    a1 = samples["folder-a1"]
    masks = load_masks(a1["masks.npz"])
    assert "video.mp4" in a1 and list(masks["object_names"]) == ["cup"]
    assert masks["control"].dtype == np.bool_ and masks["control"].shape == (T, H, W)
    assert min(iou(masks["control"][t], truth[t]) for t in range(T)) > 0.9  # codec noise removed
    assert masks["objects"][0, :, 40:60, 60:80].all() and masks["objects"][0].sum() == T * 400

    b2 = samples["folder-b2"]
    assert "video.webm" in b2, "webm is stored as it is"
    control = load_masks(b2["masks.npz"])["control"]
    assert control.shape == (T, H, W) and min(iou(control[t], truth[t]) for t in range(T)) > 0.85

    c3 = samples["folder-c3"]
    meta = json.loads(c3["json"])
    assert (meta["height"], meta["width"], meta["fps"]) == (64, 96, 12.0)
    video = decode_frames(c3["video.mp4"])
    assert video.shape == (T, 64, 96, 3)
    control = load_masks(c3["masks.npz"])["control"]
    assert control.shape == (T, 64, 96) and not control[:, 63].any() and not control[:, :, 95].any()


def test_splits_by_hash_are_stable(clips, tmp_path):
    assert folder.split_of("a1", 0.5, 0.0, "train") == folder.split_of("a1", 0.5, 0.0, "train")
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(1000):
        counts[folder.split_of(f"clip{i}", 0.1, 0.2, "train")] += 1
    assert 150 < counts["test"] < 250 and 60 < counts["validation"] < 140


def test_binarize_removes_specks_and_halos():
    frames = np.zeros((1, 20, 20), dtype=np.uint8)
    frames[0, 5:15, 5:15] = 250
    frames[0, 4, 5:15] = 90  # halo below the threshold
    frames[0, 0, 0] = 255  # a one-pixel speck
    masks = binarize(frames, threshold=128, min_blob=4)
    assert masks[0, 5:15, 5:15].all() and masks.sum() == 100


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert folder.main(["--input", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert folder.main(["--input", str(tmp_path)]) == 2
    assert "no clip folders" in capsys.readouterr().err


def prepare(root: Path, out: Path, *extra: str) -> int:
    argv = ["--input", str(root), "--out", str(out), "--workers", "1", "--no_progress", *extra]
    return folder.main(argv)


def test_authors_example_folders_with_masks_of_other_lengths(tmp_path, capsys):
    """Folders shaped like the released examples: 12 fps VP9 of odd width, grey noisy masks, object masks
    longer (and shorter) than the video."""
    from tests.helpers import EXAMPLE_HEIGHT as EH
    from tests.helpers import EXAMPLE_WIDTH as EW
    from tests.helpers import hand_masks, object_masks, write_example

    root = tmp_path / "examples"
    write_example(root / "101")  # video and hand 28 frames, cup 37, box 68: as released
    write_example(root / "102", video_frames=34, hand_frames=28, objects={"cup": 20, "box": 68})
    write_example(root / "103", video_frames=34, hand_frames=20)  # 20 driver frames: no 14-frame clip
    assert prepare(root, tmp_path / "out") == 0
    assert "mask_cut 3, clip_cut_to_driver 1, object_padded 1" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "train" / "report.json").read_text())
    assert report["samples"] == 2 and report["skipped"] == {"too_short": 1}
    assert report["mask_lengths"] == {
        "mask_cut": 3, "clip_cut_to_driver": 1, "object_padded": 1, "object_dropped": 0,
    }  # fmt: skip
    samples = read_shards(tmp_path / "out" / "train")
    first = load_masks(samples["folder-101"]["masks.npz"])
    assert first["control"].shape == (28, EH, EW) and first["objects"].shape == (2, 28, EH, EW)
    assert np.array_equal(first["control"], hand_masks(28))  # the grey, noisy mask binarised exactly
    assert list(first["object_names"]) == ["box", "cup"]
    assert np.array_equal(first["objects"][1], object_masks(28))
    second = load_masks(samples["folder-102"]["masks.npz"])
    meta = json.loads(samples["folder-102"]["json"])
    assert meta["num_frames"] == 28 and meta["mask_lengths"]["clip_cut_to_driver"] == ["hand"]
    assert second["objects"][1, :20].any(axis=(1, 2)).all() and not second["objects"][1, 20:].any()

    assert prepare(root, tmp_path / "dropped", "--short_objects", "drop") == 0
    dropped = read_shards(tmp_path / "dropped" / "train")
    assert list(load_masks(dropped["folder-102"]["masks.npz"])["object_names"]) == ["box"]


def test_a_split_without_samples_is_an_error(tmp_path, capsys):
    from tests.helpers import write_example

    write_example(tmp_path / "clips" / "1", video_frames=20)
    write_example(tmp_path / "clips" / "2", video_frames=20)
    assert prepare(tmp_path / "clips", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no clip of split 'train' became a sample (2 clips; skipped: too_short 2)" in err
    assert len(err.strip().splitlines()) == 1


def test_a_clip_folder_name_that_is_not_utf8_is_skipped_and_counted(tmp_path, capsys):
    """One folder named with Latin-1 bytes aborted the whole run (UnicodeEncodeError); it is now one skipped
    clip, counted in report.json, and the other clips become samples."""
    import os

    from tests.helpers import write_example

    root = tmp_path / "clips"
    write_example(root / "101")
    write_example(root / os.fsdecode(b"caf\xe9"))  # a name written on a Latin-1 system
    assert prepare(root, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "train" / "report.json").read_text())
    assert report["samples"] == 1 and report["skipped"] == {"name_not_utf8": 1}
    (skipped,) = report["skipped_items"]["name_not_utf8"]
    assert skipped["id"] == "caf\\xe9" and "is not UTF-8; rename it" in skipped["detail"]
    assert sorted(read_shards(tmp_path / "out" / "train")) == ["folder-101"]
    assert "skipped 1: name_not_utf8 1" in capsys.readouterr().out


@pytest.mark.parametrize("threshold", ["-1", "0", "256"])
def test_a_threshold_outside_1_to_255_is_refused(threshold, tmp_path, capsys):
    from tests.helpers import write_example

    write_example(tmp_path / "clips" / "1")
    assert prepare(tmp_path / "clips", tmp_path / "out", "--threshold", threshold) == 2
    err = capsys.readouterr().err
    assert f"--threshold must be from 1 to 255 (0 or less makes every pixel a driver), got {threshold}" in err
    assert not (tmp_path / "out").exists()
