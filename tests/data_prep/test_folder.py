"""Folder preparer: clip folders with videos and mask videos / image folders -> shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import folder
from data_prep.common import binarize
from interdyn.data.video import decode_frames

from .conftest import H, W, iou, load_masks, moving_square_video, read_shards, write_video

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
                "--shard-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["skipped"] == {
        "mask_length_mismatch": 1,
        "missing_masks": 1,
        "empty_masks": 1,
        "mask_size_mismatch": 1,
        "missing_video": 1,
        "too_short": 1,
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
