"""The world's long clips (the preparer's `long` split) and their scoring per window by interdyn evaluate."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic
from interdyn.data.clip_spec import PAPER_CLIP
from interdyn.data.video import decode_frames
from interdyn.errors import InterDynError


@pytest.fixture(scope="module")
def long_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    args = "--builtin_world --size 32 32 --fps 7 --train 0 --val 0 --test_groups 0 --long 2 --long_frames 20"
    assert synthetic.main(["--out", str(out), *args.split()]) == 0
    return out


def _samples(root: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((root / "long").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, field = member.name.partition(".")
                samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def test_long_split_has_clips_of_the_asked_length_with_disc_positions(long_split: Path) -> None:
    index = json.loads((long_split / "long" / "index.json").read_text())
    assert index["num_samples"] == 2 and index["provenance"]["settings"]["num_frames"] == 20
    assert not (long_split / "train").exists() and not (long_split / "test").exists()
    samples = _samples(long_split)
    assert sorted(samples) == ["synthetic-long-000000", "synthetic-long-000001"]
    for fields in samples.values():
        meta = json.loads(fields["json"])
        positions = np.asarray(meta["physics"]["positions"])
        assert meta["num_frames"] == 20 and positions.shape == (20, len(meta["objects"]), 2)
        assert decode_frames(fields["video.mp4"]).shape == (20, 32, 32, 3)
    # scenes of their own: not the test split's (nor the training split's) first clip
    test = synthetic.SyntheticMaker("test", 0, synthetic.builtin_world(32), 20, 7.0)
    long = synthetic.SyntheticMaker("long", 0, synthetic.builtin_world(32), 20, 7.0)
    item = synthetic.Item("000000", 0)
    assert test(item)[0][1]["json"]["physics"] != long(item)[0][1]["json"]["physics"]


def test_evaluate_scores_long_clips_per_window(long_split: Path, tmp_path: Path) -> None:
    from interdyn.commands.evaluate import evaluate

    predictions = tmp_path / "truth"
    predictions.mkdir()
    for key, fields in _samples(long_split).items():  # the ground truth as the predictions
        (predictions / f"{key}.mp4").write_bytes(fields["video.mp4"])
    clip = PAPER_CLIP.with_overrides(num_frames=20, height=32, width=32, crop="center", window="start")
    data = str(long_split / "long" / "*.tar")
    out = tmp_path / "evaluation"
    results = evaluate(
        str(predictions),
        data,
        ["physics"],
        str(out),
        clip=clip,
        device="cpu",
        model_window=8,
        window_overlap=2,
    )
    # 20 frames in windows of 8 overlapping by 2: [0, 8), [6, 14), [12, 20)
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol["windows"] == [[0, 8], [6, 14], [12, 20]]
    for i in (1, 2, 3):
        assert results[f"physics_position_error_window_{i}"] < 1.5
    assert results["seam_score"] == pytest.approx(results["seam_score_truth"])
    assert "Physics error window 3 (px)" in (out / "metrics.md").read_text()
    # a clip of one window is scored as before, without windows
    short = evaluate(
        str(predictions), data, ["physics"], str(tmp_path / "short"), clip=clip, device="cpu", model_window=20
    )
    assert "seam_score" not in short and "physics_position_error_window_1" not in short
    with pytest.raises(InterDynError, match="smaller than the model's window of 8 frames"):
        evaluate(
            str(predictions),
            data,
            ["physics"],
            str(tmp_path / "bad"),
            clip=clip,
            model_window=8,
            window_overlap=8,
        )
