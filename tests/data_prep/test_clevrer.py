"""CLEVRER preparer end to end on tiny videos in the release layout (H.264 at 25 fps, annotation JSONs
with trajectories and collisions, frame-parser proposals with COCO RLE masks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_prep import clevrer, rle
from interdyn.data import ShardDataModule
from tests.helpers import H, W, load_masks, read_shards, write_video

FPS, T, S = 25, 56, 12  # 56 frames at 25 fps: 14 frames at "7 FPS" (every 4th frame) need 53
PROPS = [
    {"object_id": 0, "color": "red", "material": "metal", "shape": "cube"},
    {"object_id": 1, "color": "blue", "material": "rubber", "shape": "sphere"},
    {"object_id": 2, "color": "green", "material": "metal", "shape": "cylinder"},
]
COLOURS = [(220, 50, 50), (50, 80, 220), (50, 200, 80)]


def positions(entering: bool, entry_row: int = 26, scene: int = 0) -> dict[int, list[tuple[int, int] | None]]:
    """Top-left corner per frame of each object (None: outside the view). Object 2 enters from the
    left at frame 5 when ``entering``; otherwise it sits in view from the start."""
    out: dict[int, list] = {0: [(40, 26)] * T, 1: [(70 + 4 * scene, 26)] * T}
    if entering:
        out[2] = [None] * 5 + [(min(26, (t - 5) * 2), entry_row) for t in range(5, T)]
    else:
        out[2] = [(10, 5)] * T
    return out


def make_video(
    root: Path,
    split: str,
    vid: str,
    entering: bool = True,
    entry_row: int = 26,
    frames: int = T,
    video: bool = True,
    proposal: bool = True,
    scene: int = 0,
) -> np.ndarray:
    """Writes the three files of one CLEVRER video; returns the true masks (K, T, H, W)."""
    pos = positions(entering, entry_row, scene)
    images = np.full((frames, H, W, 3), 120, dtype=np.uint8)
    masks = np.zeros((3, frames, H, W), dtype=bool)
    for k in range(3):
        for t in range(frames):
            if pos[k][t] is not None:
                x, y = pos[k][t]
                masks[k, t, y : y + S, x : x + S] = True
                images[t][masks[k, t]] = COLOURS[k]
    lo = int(vid) // 1000 * 1000
    group = f"{lo:05d}-{lo + 1000:05d}"
    if video:
        write_video(root / f"video_{split}" / f"video_{group}" / f"video_{vid}.mp4", images, FPS)
    annotation = {
        "scene_index": int(vid),
        "video_filename": f"video_{vid}.mp4",
        "object_property": PROPS,
        "motion_trajectory": [
            {
                "frame_id": t,
                "objects": [
                    {
                        "object_id": k,
                        "location": [pos[k][t][0] / 10, pos[k][t][1] / 10, 0.2]
                        if pos[k][t]
                        else [-3.0, 0.0, 0.2],
                        "inside_camera_view": pos[k][t] is not None,
                    }
                    for k in range(3)
                ],
            }
            for t in range(frames)
        ],
        "collision": [{"frame_id": 20, "object_ids": [2, 0]}, {"frame_id": 30, "object_ids": [0, 1]}]
        if entering
        else [],
    }
    path = root / f"annotation_{split}" / f"annotation_{group}" / f"annotation_{vid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(annotation))
    if proposal:
        frames_json = [
            {
                "frame_index": t,
                "objects": [
                    {
                        **{k2: PROPS[k][k2] for k2 in ("color", "material", "shape")},
                        "mask": rle.encode(masks[k, t]),
                    }
                    for k in range(3)
                    if masks[k, t].any()
                ],
            }
            for t in range(frames)
        ]
        (root / "derender_proposals").mkdir(exist_ok=True)
        (root / "derender_proposals" / f"proposal_{vid}.json").write_text(json.dumps({"frames": frames_json}))
    return masks


@pytest.fixture(scope="module")
def clevrer_root(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("clevrer")
    truth = {"00000": make_video(root, "train", "00000", scene=1)}  # a first frame of its own
    make_video(root, "train", "00001", entering=False)  # nothing enters
    make_video(root, "train", "00002", proposal=False)  # no masks
    make_video(root, "train", "00003", video=False)  # no video
    make_video(root, "train", "00004", frames=30)  # too short
    (root / "derender_proposals" / "proposal_00005.json").write_text("{}")  # a proposal alone is no video
    # validation: 10000 and 10001 share their first frame, the entering object takes another path
    truth["10000"] = make_video(root, "validation", "10000", entry_row=26)
    truth["10001"] = make_video(root, "validation", "10001", entry_row=40)
    return root, truth


def test_clevrer_end_to_end(clevrer_root, tmp_path):
    root, truth = clevrer_root
    out = tmp_path / "shards"
    assert (
        clevrer.main(
            ["--root", str(root), "--out", str(out), "--workers", "2", "--shard_size", "2", "--no_progress"]
        )
        == 0
    )
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["items"] == 5 and report["samples"] == 1
    assert report["skipped"] == {
        "no_entering_object": 1,
        "missing_annotations": 1,
        "missing_video": 1,
        "too_short": 1,
    }

    sample = read_shards(out / "train")["clevrer-00000"]
    meta = json.loads(sample["json"])
    masks = load_masks(sample["masks.npz"])
    assert meta["fps"] == pytest.approx(FPS) and meta["num_frames"] == T and meta["mask_source"] == "gt"
    assert np.array_equal(masks["control"], truth["00000"][2]), "the control is the entering object's mask"
    assert not masks["control"][:5].any() and masks["control"][5:].any()
    assert np.array_equal(masks["objects"], truth["00000"])
    names = list(masks["object_names"])
    assert names == ["0_red_metal_cube", "1_blue_rubber_sphere", "2_green_metal_cylinder"]
    assert meta["entering"] == [{"object": names[2], "object_id": 2, "first_visible_frame": 5}]
    assert meta["hit_directly"] == [names[0]] and meta["hit_indirectly"] == [names[1]]
    assert "group" not in meta

    val = read_shards(out / "validation")
    metas = {k: json.loads(v["json"]) for k, v in val.items()}
    assert metas["clevrer-10000"]["group"] == metas["clevrer-10001"]["group"]
    assert {metas[k]["variant"] for k in metas} == {0, 1}

    # clevrer.yaml's data section reads it (driver not in the first frame: the clip rule applies)
    config = yaml.safe_load(Path("configs/clevrer.yaml").read_text())["data"]["init_args"]
    config.update(
        val_shards=str(out / "validation" / "*.tar"),
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
        clip={**config["clip"], "height": 64, "width": 96},  # the config's clip, smaller
    )
    dm = ShardDataModule(**config)
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert batch["pixel_values"].shape == (2, 14, 3, 64, 96)
    assert (batch["control"] > 0).any()


def test_rle_matches_pycocotools_strings():
    """Reference strings written by pycocotools.mask.encode (on Fortran-ordered uint8 masks)."""
    assert rle.encode(np.eye(4, dtype=bool))["counts"] == "01400000"
    block = np.zeros((12, 25), dtype=bool)
    block[2:9, 3:20] = True
    assert rle.encode(block)["counts"] == "V1750000000000000000000000000000000j1"
    assert np.array_equal(
        rle.decode({"size": [12, 25], "counts": "V1750000000000000000000000000000000j1"}), block
    )
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random()
        assert np.array_equal(rle.decode(rle.encode(mask)), mask)
    with pytest.raises(ValueError):
        rle.decode({"size": [4, 4], "counts": "0140"})


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    assert clevrer.main(["--root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert clevrer.main(["--root", str(tmp_path)]) == 2
    assert "derender_proposals" in capsys.readouterr().err


def test_an_empty_first_frame_forms_no_group(tmp_path):
    def annotation(colour):
        return {
            "object_property": [{"object_id": 0, "color": colour, "material": "metal", "shape": "cube"}],
            "motion_trajectory": [
                {
                    "frame_id": 0,
                    "objects": [{"object_id": 0, "location": [0, 0, 0], "inside_camera_view": False}],
                }
            ],
        }

    paths = {}
    for vid, colour in (("1", "red"), ("2", "blue")):
        paths[vid] = tmp_path / f"annotation_{vid}.json"
        paths[vid].write_text(json.dumps(annotation(colour)))
    assert clevrer.first_frame_signature(annotation("red")) == ""
    assert clevrer.counterfactual_groups(paths, ["1", "2"]) == {}
