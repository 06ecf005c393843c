"""End to end: `interdyn test` writes the paper's table and videos; `interdyn evaluate` scores a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from interdyn.data import ClipDecoder, ShardClipStream
from interdyn.data.clip_spec import PAPER_CLIP, ClipSpec
from interdyn.data.video import decode_frames, encode_video
from tests.helpers import REPO_ROOT

METRICS = ["ssim", "psnr", "fvd", "kvd", "motion_fidelity", "physics"]
SMALL = PAPER_CLIP.with_overrides(height=64, width=64)  # the paper's clips at the test shards' size


def test_interdyn_test_writes_the_table_and_videos(tmp_path, synthetic_shards, random_i3d_weights, run):
    override = {
        "trainer": {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t"},
            },
            "callbacks": [
                {
                    "class_path": "interdyn.callbacks.VideoEvaluation",
                    "init_args": {
                        "metrics": METRICS,
                        "i3d_weights": str(random_i3d_weights),
                        "num_inference_steps": 2,
                        "save_videos": 2,
                    },
                }
            ],
        },
        "data": {
            "init_args": {
                "test_shards": str(synthetic_shards / "test/*.tar"),
                "num_workers": 0,
                "batch_size": 2,
            }
        },
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    result = run(
        "test",
        "--config",
        str(REPO_ROOT / "configs/tiny_shards.yaml"),
        "--config",
        str(tmp_path / "override.yaml"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "t" / "version_0"
    report = json.loads((run / "metrics.json").read_text())
    for name in ("ssim", "psnr", "fvd", "kvd", "motion_fidelity", "physics_position_error"):
        assert name in report["metrics"], name
    assert report["protocol"]["videos"] == 4 and report["protocol"]["frames"] == 14
    assert report["protocol"]["resolution"] == "64x64" and report["protocol"]["seed"] == 42
    assert len(report["protocol"]["i3d_weights_sha256"]) == 64
    table = (run / "metrics.md").read_text()
    assert "| SSIM |" in table and "FVD" in table and "Physics error" in table
    videos = sorted((run / "videos").glob("*.mp4"))
    assert len(videos) == 2
    frames = decode_frames(videos[0].read_bytes())
    assert frames.shape[0] == 14 and frames.shape[2] == 4 * 64  # input | control | sample | truth


def write_predictions(folder: Path, shards: Path, skip: int = 1) -> list[str]:
    """The ground-truth clips themselves as 'predictions' (all but the first ``skip`` keys)."""
    folder.mkdir()
    stream = ShardClipStream(
        str(shards / "test/*.tar"),
        ClipDecoder(SMALL),
        train=False,
    )
    keys = []
    for i, clip in enumerate(stream):
        keys.append(clip["key"])
        if i >= skip:
            (folder / f"{clip['key']}.mp4").write_bytes(
                encode_video(clip["pixel_values"].permute(0, 2, 3, 1).numpy(), 7.0, crf=10)
            )
    return keys


def test_evaluate_scores_a_prediction_folder(tmp_path, synthetic_shards, random_i3d_weights, run):
    keys = write_predictions(tmp_path / "coshand", synthetic_shards)
    result = run(
        "evaluate",
        "--pred_dir",
        str(tmp_path / "coshand"),
        "--data",
        str(synthetic_shards / "test/*.tar"),
        "--height",
        "64",
        "--width",
        "64",
        "--eval_window",  # the option's older spelling of --window
        "center",
        "--metrics",
        *METRICS,
        "--i3d_weights",
        str(random_i3d_weights),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "coshand" / "evaluation" / "metrics.json").read_text())
    m = report["metrics"]
    assert m["num_videos"] == len(keys) - 1 and report["protocol"]["missing_predictions"] == 1
    assert m["ssim"] > 0.9 and m["psnr"] > 28  # the ground truth, re-encoded
    assert m["motion_fidelity"] > 0.8
    assert m["physics_position_error"] < 2.0
    assert "| coshand |" in (tmp_path / "coshand" / "evaluation" / "metrics.md").read_text()
    assert (report["protocol"]["resolution"], report["protocol"]["window"]) == ("64x64", "center")


def test_evaluate_flags_make_one_clip_over_the_paper_clip(monkeypatch):
    """The flat flags users type map onto one ClipSpec; a flag left out keeps the paper's value."""
    from interdyn.commands import evaluate as command

    seen = {}

    def evaluate(
        pred_dir: str, data: str, metrics: list[str] | None = None, clip: ClipSpec = PAPER_CLIP
    ) -> None:
        seen.update(clip=clip)

    monkeypatch.setattr(command, "evaluate", evaluate)
    argv = ["--pred_dir", "p", "--data", "d", "--height", "64", "--num_frames", "4", "--eval_window", "start"]
    assert command.evaluate_main(argv) == 0
    assert seen["clip"] == PAPER_CLIP.with_overrides(height=64, num_frames=4, window="start")


def test_evaluate_explains_bad_inputs(tmp_path, synthetic_shards, monkeypatch, run):
    (tmp_path / "empty").mkdir()
    result = run(
        "evaluate",
        "--pred_dir",
        str(tmp_path / "empty"),
        "--data",
        str(synthetic_shards / "test/*.tar"),
        cwd=tmp_path,
    )
    assert (
        result.returncode == 2
        and "no prediction videos" in result.stderr
        and "Traceback" not in result.stderr
    )
    from interdyn.errors import InterDynError

    write_predictions(tmp_path / "preds", synthetic_shards)
    monkeypatch.setenv("INTERDYN_CACHE", str(tmp_path / "no-cache"))
    with pytest.raises(InterDynError, match="interdyn weights fetch i3d"):
        run_evaluate(tmp_path / "preds", str(synthetic_shards / "test/*.tar"), metrics=["fvd"])
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(InterDynError, match="--out .* is not a folder"):
        run_evaluate(tmp_path / "preds", str(synthetic_shards / "test/*.tar"), out=str(tmp_path / "taken"))


def ground_truth_predictions(folder: Path, shards: str, size: tuple[int, int] = (64, 64)) -> list[str]:
    """Every ground-truth clip of ``shards`` written as a prediction named by its key, at ``size``."""
    import torch.nn.functional as F

    folder.mkdir(parents=True)
    decoder = ClipDecoder(SMALL)
    keys = []
    for clip in ShardClipStream(shards, decoder, train=False):
        frames = clip["pixel_values"]
        if tuple(frames.shape[-2:]) != size:
            frames = F.interpolate(frames, size=size, mode="bicubic", antialias=True)
        (folder / f"{clip['key']}.mp4").write_bytes(
            encode_video(frames.permute(0, 2, 3, 1).contiguous().numpy(), 7.0, crf=10)
        )
        keys.append(clip["key"])
    return keys


def run_evaluate(pred_dir: Path, shards: str, **kw):
    from interdyn.commands.evaluate import evaluate

    kw.setdefault("metrics", ["ssim", "psnr"])
    return evaluate(str(pred_dir), shards, clip=SMALL, **kw)


def test_evaluate_leaves_out_bad_predictions_and_counts_them(tmp_path, synthetic_shards, capsys):
    shards = str(synthetic_shards / "test/*.tar")
    keys = ground_truth_predictions(tmp_path / "preds", shards)
    (tmp_path / "preds" / f"{keys[0]}.mp4").write_bytes(b"not a video")
    short = decode_frames((tmp_path / "preds" / f"{keys[1]}.mp4").read_bytes())[:9]
    (tmp_path / "preds" / f"{keys[1]}.mp4").write_bytes(encode_video(short, 7.0))
    results = run_evaluate(tmp_path / "preds", shards)
    err = capsys.readouterr().err
    assert f"left out {keys[0]} (unreadable)" in err and f"left out {keys[1]} (too_short)" in err
    assert "predictions left out: too_short 1, unreadable 1" in err
    report = json.loads((tmp_path / "preds" / "evaluation" / "metrics.json").read_text())
    assert report["protocol"]["skipped_predictions"] == {"too_short": 1, "unreadable": 1}
    assert report["skipped_predictions"]["too_short"] == [
        f"{keys[1]}: {keys[1]}.mp4 has 9 frames, the protocol needs 14"
    ]
    assert results["num_videos"] == len(keys) - 2 and results["ssim"] > 0.9
    assert report["protocol"]["clip_fps"] == [7.0]  # every 2nd frame of the 14 fps test videos
    assert "skipped_predictions" in (tmp_path / "preds" / "evaluation" / "metrics.md").read_text()


def test_predictions_of_another_size_need_resize(tmp_path, synthetic_shards):
    from interdyn.errors import InterDynError

    shards = str(synthetic_shards / "test/*.tar")
    ground_truth_predictions(tmp_path / "big", shards, size=(96, 96))
    with pytest.raises(InterDynError, match=r"is 96x96 but the clips are 64x64 .*pass --resize"):
        run_evaluate(tmp_path / "big", shards)
    resized = run_evaluate(tmp_path / "big", shards, resize=True)
    ground_truth_predictions(tmp_path / "same", shards)
    same = run_evaluate(tmp_path / "same", shards)
    assert same["ssim"] > resized["ssim"]  # resizing costs fidelity: why it is not silent
    report = json.loads((tmp_path / "big" / "evaluation" / "metrics.json").read_text())
    assert report["protocol"]["resized_predictions"] is True


def test_authors_example_folders_through_preparer_and_evaluate(tmp_path):
    """Folders shaped like the released examples (object masks longer than the video, odd width, grey masks)
    become test shards and are scored."""
    from data_prep import folder
    from tests.helpers import write_example

    write_example(tmp_path / "examples" / "11")
    write_example(tmp_path / "examples" / "12", video_frames=34, hand_frames=28, objects={"cup": 20})
    argv = ["--input", str(tmp_path / "examples"), "--out", str(tmp_path / "shards"), "--split", "test"]
    assert folder.main(argv + ["--workers", "1", "--no_progress"]) == 0
    shards = str(tmp_path / "shards" / "test" / "*.tar")
    keys = ground_truth_predictions(tmp_path / "preds", shards)
    assert sorted(keys) == ["folder-11", "folder-12"]
    results = run_evaluate(tmp_path / "preds", shards)
    assert results["num_videos"] == 2 and results["ssim"] > 0.9
    report = json.loads((tmp_path / "preds" / "evaluation" / "metrics.json").read_text())
    assert report["protocol"]["clip_fps"] == [6.0]  # every 2nd frame of 12 fps
