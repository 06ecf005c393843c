"""SSV2 preparer end to end on a tiny dataset in the real layout (VP9 webm at 12 fps, label JSONs,
Something-Else part files with hand boxes that follow a drawn moving square)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_prep import ssv2, ssv2_annotations
from interdyn.data import ShardDataModule
from tests.helpers import H, W, iou, load_masks, moving_square_video, read_shards, square_box, write_video

CUP = (60, 40, 80, 60)  # a static object box (x1, y1, x2, y2)


def frame_entry(vid: str, t: int, hands: list, objects: bool = True) -> dict:
    labels = [
        {
            "box2d": dict(zip(("x1", "y1", "x2", "y2"), b, strict=True)),
            "category": "hand",
            "standard_category": "hand",
        }
        for b in hands
    ]
    if objects:
        labels.append(
            {
                "box2d": dict(zip(("x1", "y1", "x2", "y2"), CUP, strict=True)),
                "category": "a cup",
                "standard_category": "0000",
            }
        )
    return {
        "name": f"{vid}/{t + 1:04d}.jpg",
        "labels": labels,
        "gt_placeholders": ["a cup"],
        "nr_instances": len(labels),
    }


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ssv2")
    videos = root / "20bn-something-something-v2"
    boxes_dir = root / "something_else"
    boxes_dir.mkdir()
    n = 30  # 2.5 s at 12 fps: enough for 14 frames at 7 FPS (23 source frames)
    boxes: dict[str, list] = {}

    def add(vid: str, frames: int = n, every: int = 1, hands=None, objects=True, video=True):
        f, _ = moving_square_video(frames)
        if video:
            write_video(videos / f"{vid}.webm", f, 12, codec="libvpx-vp9")
        boxes[vid] = [
            frame_entry(vid, t, hands(t) if hands else [square_box(t)], objects)
            for t in range(0, frames, every)
        ]

    add("101")
    add("102", every=2)  # annotated on even frames only: odd frames are interpolated
    add("103", video=False)  # missing video
    add("104")
    (videos / "104.webm").write_bytes(b"\x1a\x45\xdf\xa3 not a real webm" * 20)  # corrupt
    f, _ = moving_square_video(n)
    write_video(videos / "105.webm", f, 12, codec="libvpx-vp9")  # no Something-Else entry
    add("106", hands=lambda t: [])  # objects only
    add("107", hands=lambda t: [(W + 10, 5, W + 30, 20)])  # hand box outside the frame
    add("108", frames=15)  # too short
    add("201")
    add("202", hands=lambda t: [square_box(t), (70, 2, 90, 14)])  # two hands, merged
    # the four Something-Else part files
    ids = sorted(boxes)
    for part in range(4):
        (boxes_dir / f"bounding_box_smthsmth_part{part + 1}.json").write_text(
            json.dumps({vid: boxes[vid] for vid in ids[part::4]})
        )
    labels = root / "labels"
    labels.mkdir()

    def entry(vid):
        return {
            "id": vid,
            "label": "pushing a cup",
            "template": "Pushing [something]",
            "placeholders": ["a cup"],
        }

    train = ["101", "102", "103", "104", "105", "106", "107", "108"]
    (labels / "something-something-v2-train.json").write_text(json.dumps([entry(v) for v in train]))
    (labels / "something-something-v2-validation.json").write_text(
        json.dumps([entry(v) for v in ("201", "202")])
    )
    return root, boxes_dir


def run(args: list[str]) -> int:
    return ssv2.main([*args, "--no_progress"])


def source_args(root: Path, boxes: Path, *rest: str | Path | int) -> list[str]:
    """``--root ROOT --boxes BOXES`` and the rest of the arguments."""
    return ["--root", str(root), "--boxes", str(boxes), *map(str, rest)]


def test_boxes_mode_end_to_end(ssv2_root, tmp_path):
    root, boxes = ssv2_root
    out = tmp_path / "shards"
    assert (
        run(source_args(root, boxes, "--out", out, "--masks", "boxes", "--workers", 2, "--shard_size", 3))
        == 0
    )
    report = json.loads((out / "train" / "report.json").read_text())
    assert report["samples"] == 2
    assert report["skipped"] == {
        "missing_video": 1,
        "corrupt_video": 1,
        "missing_annotations": 1,
        "no_hand_boxes": 1,
        "boxes_outside_frame": 1,
        "too_short": 1,
    }
    samples = read_shards(out / "train")
    assert sorted(samples) == ["ssv2-101", "ssv2-102"]
    for key in ("ssv2-101", "ssv2-102"):
        sample = samples[key]
        assert sample["video.webm"][:4] == b"\x1a\x45\xdf\xa3"  # the original webm, untouched
        meta = json.loads(sample["json"])
        assert (
            meta["fps"] == pytest.approx(12)
            and meta["num_frames"] == 30
            and (meta["height"], meta["width"]) == (H, W)
        )
        assert meta["label"] == "pushing a cup" and meta["mask_source"] == "boxes"
        masks = load_masks(sample["masks.npz"])
        _, truth = moving_square_video(30)
        assert masks["control"].shape == (30, H, W)
        last = 29 if key == "ssv2-101" else 28  # 102 is annotated on even frames: odd ones interpolated
        for t in range(last + 1):  # filled hand boxes = where the square is
            assert iou(masks["control"][t], truth[t]) == 1.0, (key, t)
        assert not masks["control"][last + 1 :].any(), "no boxes are invented after the last annotation"
        assert list(masks["object_names"]) == ["a cup"]
        x1, y1, x2, y2 = CUP
        assert masks["objects"][0, : last + 1, y1:y2, x1:x2].all()
        assert masks["objects"][0].sum() == (last + 1) * (x2 - x1) * (y2 - y1)
        assert meta["object_boxes"]["a cup"][0] == list(CUP)
    val = read_shards(out / "validation")
    control = load_masks(val["ssv2-202"]["masks.npz"])["control"]
    assert control[0, 2:14, 70:90].all() and control[0, 20:36, 4:20].all()  # both hands in one mask

    # the real config's data section reads the result with only the shard paths changed
    config = yaml.safe_load(Path("configs/ssv2.yaml").read_text())["data"]["init_args"]
    config.update(
        train_shards=str(out / "train" / "*.tar"),
        val_shards=str(out / "validation" / "*.tar"),
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
    )
    dm = ShardDataModule(**config)
    dm.setup("validate")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert batch["pixel_values"].shape == (2, 14, 3, 256, 384)
    assert batch["control"].amax() == 1.0 and batch["control"].amin() == -1.0
    # training streams over shards where some are empty (every video of their chunk was skipped)
    assert 0 in json.loads((out / "train" / "index.json").read_text())["samples_per_shard"]
    dm.hparams.batch_size = 2
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch["key"]) <= {"ssv2-101", "ssv2-102"} and batch["pixel_values"].shape[0] == 2


def test_rerun_resumes_and_rewrites_nothing(ssv2_root, tmp_path):
    root, boxes = ssv2_root
    out = tmp_path / "shards"
    args = source_args(
        root, boxes, "--out", out, "--masks", "boxes", "--workers", 1, "--shard_size", 2, "--splits", "train"
    )
    assert run(args) == 0
    shards = sorted((out / "train").glob("*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    # simulate a run killed while it wrote shard 2: its file and its progress record are gone
    (out / "train" / "_progress" / f"{shards[2].name}.json").unlink()
    shards[2].unlink()
    assert run(args) == 0
    assert shards[2].exists()
    for p in shards:
        if p != shards[2]:
            assert p.stat().st_mtime_ns == stamps[p], f"{p.name} was rewritten"
    assert json.loads((out / "train" / "index.json").read_text())["num_samples"] == 2
    # other settings on the same folder are refused
    assert run([*args[:-4], "--shard_size", "3", "--splits", "train"]) == 2


def test_id_lists_choose_splits_and_leave_train(ssv2_root, tmp_path):
    root, boxes = ssv2_root
    eval_list = tmp_path / "eval.txt"
    eval_list.write_text("# held out\n102\n")
    out = tmp_path / "shards"
    assert (
        run(
            source_args(
                root,
                boxes,
                *("--out", out, "--masks", "boxes", "--splits", "train"),
                *("--ids", f"test={eval_list}", "--workers", 1),
            )
        )
        == 0
    )
    assert sorted(read_shards(out / "train")) == ["ssv2-101"]
    assert sorted(read_shards(out / "test")) == ["ssv2-102"]


def test_clear_errors(ssv2_root, tmp_path, capsys):
    root, boxes = ssv2_root
    with pytest.raises(SystemExit) as exit_info:
        ssv2.main(["--root", str(root), "--boxes", str(boxes), "--masks", "sam2"])
    assert exit_info.value.code == 2 and "--sam2_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ssv2.main(
            ["--root", str(root), "--boxes", str(boxes), "--sam2_checkpoint", str(tmp_path / "nope.pt")]
        )
    assert "does not exist" in capsys.readouterr().err
    assert run(source_args(root, tmp_path, "--masks", "boxes", "--out", tmp_path / "o")) == 2
    assert "bounding_box_smthsmth_part" in capsys.readouterr().err
    assert run(["--root", str(tmp_path / "missing"), "--boxes", str(boxes), "--masks", "boxes"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_track_hands_links_boxes_by_overlap():
    hands = {
        0: [(0, 0, 10, 10), (50, 50, 60, 60)],
        1: [(52, 50, 62, 60), (1, 0, 11, 10)],
        2: [(2, 0, 12, 10)],
    }
    tracks = ssv2_annotations.track_hands(hands)
    assert len(tracks) == 2
    assert tracks[0] == {0: (0, 0, 10, 10), 1: (1, 0, 11, 10), 2: (2, 0, 12, 10)}
    assert tracks[1] == {0: (50, 50, 60, 60), 1: (52, 50, 62, 60)}
    filled = ssv2_annotations.interpolate_track(
        {0: (0, 0, 10, 10), 4: (4, 0, 14, 10), 20: (0, 0, 1, 1)}, max_gap=12
    )
    assert filled[2] == (2, 0, 12, 10) and 10 not in filled


def test_sam2_path_with_a_random_tiny_model(ssv2_root, tmp_path):
    """The SAM2 wiring end to end (random weights: the masks are meaningless, their shape is not)."""
    pytest.importorskip("sam2")
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    config, overrides = "configs/sam2.1/sam2.1_hiera_t.yaml", ["++model.image_size=256"]
    torch.manual_seed(0)
    model = build_sam2_video_predictor(config, None, device="cpu", hydra_overrides_extra=overrides)
    checkpoint = tmp_path / "sam2_random.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    root, boxes = ssv2_root
    out = tmp_path / "shards"
    sam2 = ("--sam2_checkpoint", checkpoint, "--sam2_config", config, "--sam2_override", overrides[0])
    args = source_args(
        root,
        boxes,
        *("--out", out, "--splits", "validation", "--limit", 1, "--masks", "sam2"),
        *(*sam2, "--sam2_prompt_every", 8, "--device", "cpu"),
    )
    assert run(args) == 0
    sample = read_shards(out / "validation")["ssv2-201"]
    meta = json.loads(sample["json"])
    control = load_masks(sample["masks.npz"])["control"]
    assert meta["mask_source"] == "sam2" and control.shape == (30, H, W) and control.dtype == np.bool_
    # the chunk's record counts the SAM2 frames, which each part reports per second
    (record,) = (out / "validation" / "_progress").glob("*.json")
    assert json.loads(record.read_text())["counters"] == {"sam2_frames": 30}


def test_same_named_objects_stay_apart():
    """'Putting cup next to cup': two objects with one category text, told apart by placeholder."""

    def label(box, category, standard):
        return {
            "box2d": dict(zip(("x1", "y1", "x2", "y2"), box, strict=True)),
            "category": category,
            "standard_category": standard,
        }

    entries = [
        {
            "name": "7/0001.jpg",
            "labels": [
                label((0, 0, 5, 5), "cup", "0001"),
                label((10, 10, 20, 20), "cup", "0000"),
                label((1, 1, 3, 3), "hand", "hand"),
            ],
        },
        {
            "name": "7/0002.jpg",
            "labels": [label((10, 10, 20, 20), "cup", "0000"), label((1, 0, 6, 5), "cup", "0001")],
        },
    ]
    boxes = ssv2_annotations.parse_frames(entries)
    assert [name for name, _ in boxes.objects] == ["cup (0000)", "cup (0001)"]
    assert ssv2_annotations.VideoBoxes.track(boxes.objects[1][1]) == {0: (0, 0, 5, 5), 1: (1, 0, 6, 5)}
    assert boxes.hands_per_frame() == {0: [(1, 1, 3, 3)]}


def test_bad_id_list_arguments(ssv2_root, tmp_path, capsys):
    root, boxes = ssv2_root
    assert run(source_args(root, boxes, "--masks", "boxes", "--ids", "test")) == 2
    assert "SPLIT=FILE" in capsys.readouterr().err
    bad = tmp_path / "ids.json"
    bad.write_text("{not json")
    assert run(source_args(root, boxes, "--masks", "boxes", "--ids", f"test={bad}")) == 2
    assert "JSON list" in capsys.readouterr().err


def test_parts_from_launcher_variables_give_the_bytes_of_one_process(ssv2_root, tmp_path, monkeypatch):
    """Part 1 of 2 as torchrun starts it, part 0 of 2 as a SLURM array task: both splits come out as
    the one-process run's, byte for byte; the second part to finish writes each index."""
    root, boxes = ssv2_root
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    args = source_args(root, boxes, "--masks", "boxes", "--workers", 1, "--shard_size", 2)
    assert run([*args, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "parts"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run([*args, "--out", str(out)]) == 0
    assert not (out / "train" / "index.json").exists() and (out / "train" / "ssv2-train-000001.tar").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert run([*args, "--out", str(out)]) == 0
    for split in ("train", "validation"):
        one = {p.name: p.read_bytes() for p in (tmp_path / "one" / split).iterdir() if p.is_file()}
        assert "index.json" in one and "report.json" in one
        assert {p.name: p.read_bytes() for p in (out / split).iterdir() if p.is_file()} == one
