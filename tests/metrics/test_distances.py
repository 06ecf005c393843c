"""FVD / KVD building blocks against closed forms and their defining properties."""

from __future__ import annotations

import math
import warnings

import torch

from interdyn.metrics.distances import fid_from_features, frechet_distance, gaussian_stats, polynomial_mmd


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum())
    assert math.isclose(
        frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)), expected, rel_tol=1e-9
    )


def test_frechet_distance_with_full_covariances():
    # Commuting full covariances: S = Q diag(l) Q^T with a shared rotation Q.
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    l1, l2 = (
        torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64),
        torch.tensor([4.0, 1.0, 1.0, 9.0], dtype=torch.float64),
    )
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    expected = float((l1 + l2 - 2 * (l1 * l2).sqrt()).sum())
    assert math.isclose(frechet_distance(torch.zeros(4), s1, torch.zeros(4), s2), expected, rel_tol=1e-9)


def features(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=gen, dtype=torch.float64) + shift


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_noise():
    real = features(200, 0)
    assert abs(fid_from_features(real, real)) < 1e-6
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values = [fid_from_features(real, real + s * noise) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def test_kvd_is_near_zero_for_the_same_distribution():
    same = polynomial_mmd(features(300, 0), features(300, 1))
    shifted = polynomial_mmd(features(300, 0), features(300, 1, shift=0.5))
    assert abs(same) < 0.05 * shifted
    assert shifted > 0


def test_few_videos_warn_about_a_singular_covariance():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fid_from_features(features(10, 0), features(10, 1))
    assert any("singular" in str(w.message) for w in caught)


def test_gaussian_stats_is_unbiased():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    mu, sigma = gaussian_stats(x)
    assert mu.tolist() == [2.0, 1.0] and sigma.tolist() == [[2.0, 2.0], [2.0, 2.0]]
