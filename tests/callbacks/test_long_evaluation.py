"""`interdyn test` on clips longer than the UNet's window: the videos are sampled in overlapping windows and
the metrics score each video with its seams (per-window scores: interdyn/metrics/windows.py)."""

from __future__ import annotations

import json

from interdyn.callbacks import VideoEvaluation
from interdyn.callbacks.evaluation import long_windows
from interdyn.data import MovingShapesDataModule
from tests.helpers import short_fit_trainer, tiny_module


def test_a_long_test_clip_is_scored_with_its_windows_and_seams(tmp_path):
    module = tiny_module(num_inference_steps=1)
    window = module.unet.config.num_frames
    frames = window + 6  # two windows with the default overlap
    assert long_windows(module, window) is None  # a clip of one window is scored as before
    spans = long_windows(module, frames)
    assert spans[0] == (0, window) and spans[-1] == (frames - window, frames) and len(spans) == 2

    data = MovingShapesDataModule(num_train=2, num_val=1, num_test=2, num_frames=frames, height=64, width=64)
    metrics = VideoEvaluation(metrics=["ssim"], num_inference_steps=1, save_videos=1, out_dir=str(tmp_path))
    trainer = short_fit_trainer(callbacks=[metrics], logger=False, default_root_dir=str(tmp_path))
    trainer.test(module, datamodule=data)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["protocol"]["frames"] == frames
    # the SVD protocol's keys as before, its sampling described by the module (SVD's steps, Euler, guidance range)
    protocol = report["protocol"]
    assert list(protocol) == [
        *("videos", "samples_per_input", "frames", "resolution", "seed"),
        *("sampling_steps", "sampler", "guidance", "i3d_weights_sha256", "tracker"),
    ]
    assert (protocol["sampling_steps"], protocol["sampler"], protocol["guidance"]) == (1, "euler", "1.0->3.0")
    rows = report["per_video"]
    assert len(rows) == 2 and all("seam_score" in row and "seam_score_truth" in row for row in rows)
    assert all(row["seam_score"] > 0 for row in rows)
