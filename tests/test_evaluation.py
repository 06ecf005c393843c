"""End to end: `interdyn test` writes the paper's table and videos; `interdyn evaluate` scores a folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from interdyn.data import ClipDecoder, ShardClipStream
from interdyn.data.video import decode_frames, encode_video
from tests.conftest import REPO_ROOT
from tests.test_cli import interdyn

METRICS = ["ssim", "psnr", "fvd", "kvd", "motion_fidelity", "physics"]


def test_interdyn_test_writes_the_table_and_videos(tmp_path, synthetic_shards, random_i3d_weights):
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
    result = interdyn(
        "test",
        "--config",
        str(REPO_ROOT / "configs/demo.yaml"),
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
        ClipDecoder(num_frames=14, fps=7.0, height=64, width=64, window="center"),
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


def test_evaluate_scores_a_prediction_folder(tmp_path, synthetic_shards, random_i3d_weights):
    keys = write_predictions(tmp_path / "coshand", synthetic_shards)
    result = interdyn(
        "evaluate",
        "--pred_dir",
        str(tmp_path / "coshand"),
        "--data",
        str(synthetic_shards / "test/*.tar"),
        "--height",
        "64",
        "--width",
        "64",
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


def test_evaluate_explains_bad_inputs(tmp_path, synthetic_shards):
    (tmp_path / "empty").mkdir()
    result = interdyn(
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
    write_predictions(tmp_path / "preds", synthetic_shards)
    result = interdyn(
        "evaluate",
        "--pred_dir",
        str(tmp_path / "preds"),
        "--data",
        str(synthetic_shards / "test/*.tar"),
        "--height",
        "64",
        "--width",
        "64",
        "--metrics",
        "fvd",
        cwd=tmp_path,
        env={"INTERDYN_CACHE": str(tmp_path / "no-cache")},
    )
    assert result.returncode == 2 and "interdyn weights fetch i3d" in result.stderr
