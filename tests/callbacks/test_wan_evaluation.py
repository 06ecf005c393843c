"""The paper's table from ``interdyn test`` on the Wan backbone: :class:`VideoEvaluation` samples every test clip
through the Wan module's own ``sample`` (seeded by the clip's key, as on SVD), scores those videos, and the report's
protocol names the Wan sampler and the steps it took, as the module describes them (``sampling_protocol``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from interdyn.callbacks import VideoEvaluation
from interdyn.callbacks.clip_sampler import ClipSampler
from interdyn.data.sampling import key_seed
from tests.helpers import REPO_ROOT, tiny_module
from tests.training.wan.helpers import FRAMES, SIZE, quiet_trainer, tiny_wan_module, toy_data

TINY = str(REPO_ROOT / "configs" / "wan_tiny.yaml")
WAN_SAMPLER = (
    "UniPCMultistepScheduler"  # the tiny Wan's own scheduler (Wan2.2 TI2V ships UniPC on flow sigmas)
)


def psnr(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over frames of each frame's PSNR, data range 1 (the paper's per-video PSNR), computed here apart
    from the metrics package."""
    mse = (fake.double() - real.double()).square().flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def test_interdyn_test_on_wan_writes_the_table_with_the_wan_protocol(tmp_path, run):
    override = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "interdyn.callbacks.VideoEvaluation",
                    "init_args": {"metrics": ["psnr", "ssim"], "save_videos": 1},
                }
            ]
        },
        "model": {"init_args": {"test_videos": False, "sampling": {"num_inference_steps": 3}}},
        "data": {
            "init_args": {"num_test": 2, "num_frames": FRAMES, "height": SIZE, "width": SIZE, "batch_size": 2}
        },
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    done = run("test", "--config", TINY, "--config", str(tmp_path / "override.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "wan_tiny" / "version_0"
    report = json.loads((folder / "metrics.json").read_text())
    metrics = report["metrics"]
    assert {"psnr", "ssim", "ssim_first_frame"} <= set(metrics) and metrics["num_videos"] == 2
    assert all(math.isfinite(metrics[name]) for name in ("psnr", "ssim", "ssim_first_frame"))
    protocol = report["protocol"]
    # the module's steps (3, over the config's 2), its scheduler, and no prompt guidance: not SVD's 50/euler
    assert (protocol["sampler"], protocol["sampling_steps"], protocol["guidance"]) == (WAN_SAMPLER, 3, "none")
    assert (protocol["frames"], protocol["resolution"], protocol["videos"]) == (FRAMES, f"{SIZE}x{SIZE}", 2)
    assert WAN_SAMPLER in (folder / "metrics.md").read_text()
    assert len(list((folder / "videos").glob("*.mp4"))) == 1


def test_the_table_scores_the_wan_modules_own_samples(tmp_path):
    module = tiny_wan_module(test_videos=False)  # its sampling: 2 steps; the callback's 1 replaces them
    data = toy_data(num_test=2)
    evaluation = VideoEvaluation(
        metrics=["psnr", "ssim"], seed=7, num_inference_steps=1, save_videos=0, out_dir=str(tmp_path)
    )
    quiet_trainer(callbacks=[evaluation]).test(module, datamodule=data)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert (report["protocol"]["sampler"], report["protocol"]["sampling_steps"]) == (WAN_SAMPLER, 1)
    scored = {row["key"]: row["psnr"] for row in report["per_video"]}

    batch = next(iter(data.test_dataloader()))
    keys = list(batch["key"])
    assert sorted(scored) == sorted(keys)
    own = {}
    for i, key in enumerate(keys):
        pixels, control = batch["pixel_values"][i : i + 1], batch["control"][i : i + 1]
        video = module.sample(
            pixels, control, seed=key_seed(7, key), num_videos_per_prompt=1, num_inference_steps=1
        )
        assert video.shape == (1, 1, FRAMES, 3, SIZE, SIZE)
        own[key] = psnr(video[0, 0], (pixels[0] + 1) / 2)
        # the test can tell the videos apart: another seed's video scores otherwise
        other = module.sample(
            pixels, control, seed=key_seed(8, key), num_videos_per_prompt=1, num_inference_steps=1
        )
        assert abs(psnr(other[0, 0], (pixels[0] + 1) / 2) - own[key]) > 1e-3
    for key in keys:
        assert scored[key] == pytest.approx(own[key], abs=1e-4), key
    assert report["metrics"]["psnr"] == pytest.approx(sum(own.values()) / len(own), abs=1e-4)


def test_each_module_describes_its_own_sampling():
    """The protocol reads the module's settings, whatever the backbone: SVD's steps, scheduler and guidance
    range, Wan's steps and scheduler; a callback's own step count replaces the module's."""
    shape = (FRAMES, 3, SIZE, SIZE)
    svd = tiny_module(num_inference_steps=3, scheduler="dpmpp_2m", min_guidance_scale=1.5)
    wan = tiny_wan_module(sampling={"num_inference_steps": 4})
    assert ClipSampler(seed=1).protocol(svd, shape) == {
        **dict(samples_per_input=1, frames=FRAMES, resolution=f"{SIZE}x{SIZE}", seed=1),
        **dict(sampling_steps=3, sampler="dpmpp_2m", guidance="1.5->3.0"),
    }
    described = ClipSampler(seed=1).protocol(wan, shape)
    assert (described["sampling_steps"], described["sampler"], described["guidance"]) == (
        4,
        WAN_SAMPLER,
        "none",
    )
    for module in (svd, wan):
        assert ClipSampler(num_inference_steps=6).protocol(module, shape)["sampling_steps"] == 6
