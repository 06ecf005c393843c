"""Distances between feature sets: Frechet distance (FVD) and unbiased polynomial-kernel MMD (KVD).

Computed here in float64 from the gathered features rather than through torchmetrics' image-oriented
FID/KID classes: the features are video-level I3D logits gathered across ranks first, and the
Frechet distance needs double precision for 400-dimensional covariances of a few hundred videos.
"""

from __future__ import annotations

import warnings

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64."""
    x = features.double()
    if x.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``; the trace of the matrix square root is the sum of
    the square roots of the eigenvalues of ``S1 S2`` (real and non-negative up to round-off)."""
    diff = (mu1 - mu2).double()
    eig = torch.linalg.eigvals(sigma1.double() @ sigma2.double())
    trace_sqrt = eig.real.clamp(min=0).sqrt().sum()
    return float(diff @ diff + sigma1.double().trace() + sigma2.double().trace() - 2 * trace_sqrt)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between two ``(N, D)`` feature sets (warns when N <= D: singular covariance)."""
    for name, feats in (("real", real), ("generated", fake)):
        if feats.shape[0] <= feats.shape[1]:
            warnings.warn(
                f"{feats.shape[0]} {name} videos for {feats.shape[1]}-d features: the covariance is singular and "
                "FVD is biased upwards and not comparable with values from more videos",
                stacklevel=2,
            )
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def polynomial_mmd(real: torch.Tensor, fake: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel ``(x.y / D + coef)^degree`` (the KID formula); KVD on I3D features."""
    x, y = real.double(), fake.double()
    d = x.shape[1]
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("need at least 2 videos on each side for the unbiased MMD")
    kxx = (x @ x.T / d + coef) ** degree
    kyy = (y @ y.T / d + coef) ** degree
    kxy = (x @ y.T / d + coef) ** degree
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())
