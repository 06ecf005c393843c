"""SSIM / PSNR / LPIPS per video, and LPIPS's backbone weights handling."""

from __future__ import annotations

import pytest
import torch
import torchvision

from interdyn.errors import WeightsNotFoundError
from interdyn.metrics.frame_metrics import (
    LPIPS_BACKBONE_FILES,
    build_lpips,
    lpips_per_video,
    psnr_per_video,
    ssim_per_video,
)


def video(seed: int) -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_psnr_and_ssim_per_video():
    real = video(0)
    noisy = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert psnr_per_video(real, real) == float("inf") or psnr_per_video(real, real) > 80
    assert 20 < psnr_per_video(noisy, real) < 30  # sigma 0.05 -> about 26 dB
    assert ssim_per_video(real, real) == pytest.approx(1.0, abs=1e-5)
    assert ssim_per_video(noisy, real) < ssim_per_video(real, real)


def test_lpips_without_backbone_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_lpips("alex")


def test_lpips_with_a_given_backbone_file(tmp_path):
    """A real torchvision SqueezeNet backbone (random weights: no ImageNet weights here) loaded from a path."""
    backbone = tmp_path / LPIPS_BACKBONE_FILES["squeeze"]
    torch.save(torchvision.models.squeezenet1_1().state_dict(), backbone)
    lpips = build_lpips("squeeze", str(backbone))
    real, other = video(0), video(2)
    assert lpips_per_video(lpips, real, real) == pytest.approx(0.0, abs=1e-6)
    assert lpips_per_video(lpips, other, real) > 0
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_lpips("squeeze", str(tmp_path / "nope.pth"))
