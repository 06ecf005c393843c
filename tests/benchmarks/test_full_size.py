"""The full-size SVD + branch architecture with random weights (slow: ~12 GB of fp32 weights)."""

from __future__ import annotations

import pytest
import torch

from interdyn.training.module import InterDynModule

pytestmark = pytest.mark.slow


def test_full_size_training_step_and_parameter_counts():
    module = InterDynModule(svd="random:svd")
    assert sum(p.numel() for p in module.unet.parameters()) == 1_524_623_082
    assert sum(p.numel() for p in module.controlnet.parameters()) == 682_021_537
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 2, 3, 64, 64, generator=gen) * 2 - 1
    control = torch.where(torch.rand(1, 2, 3, 64, 64, generator=gen) > 0.8, 1.0, -1.0)
    loss = module.compute_loss(pixels, control, drop_image=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in module.unet.parameters())
    assert module.controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
