"""EDM sigma sampling, preconditioning and loss against hand-computed values (the paper's EDM recipe)."""

from __future__ import annotations

import math

import torch

from interdyn.models.edm import edm_loss, loss_weight, precondition, sample_sigmas


def test_preconditioning_at_sigma_one_and_two():
    pc = precondition(torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(pc.c_skip, torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(pc.c_out, torch.tensor([-1 / math.sqrt(2), -2 / math.sqrt(5)]))
    torch.testing.assert_close(pc.c_in, torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(5)]))
    torch.testing.assert_close(pc.c_noise, torch.tensor([0.0, 0.25 * math.log(2.0)]))


def test_loss_weight_values():
    torch.testing.assert_close(loss_weight(torch.tensor([1.0, 2.0, 0.5])), torch.tensor([2.0, 1.25, 5.0]))


def test_loss_is_weighted_mean_of_squared_error():
    target = torch.zeros(2, 1, 1, 2, 2)
    denoised = torch.ones(2, 1, 1, 2, 2)
    denoised[1] *= 2.0  # squared error 4 for the second sample
    sigma = torch.tensor([1.0, 2.0])  # weights 2 and 1.25
    torch.testing.assert_close(edm_loss(denoised, target, sigma), torch.tensor((2.0 * 1 + 1.25 * 4) / 2))


def test_perfect_v_prediction_gives_zero_loss():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 5, 5, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1, 1, 1)
    noisy = x0 + sigma * noise
    pc = precondition(sigma)
    # The network output that denoises exactly: F = (x0 - c_skip * x_noisy) / c_out.
    perfect = (x0 - pc.c_skip * noisy) / pc.c_out
    denoised = pc.c_skip * noisy + pc.c_out * perfect
    assert edm_loss(denoised, x0, sigma.flatten()).item() < 1e-8


def test_sigma_distribution_is_lognormal_07_16():
    sigmas = sample_sigmas(200_000, generator=torch.Generator().manual_seed(0))
    logs = sigmas.log()
    assert abs(logs.mean().item() - 0.7) < 0.02
    assert abs(logs.std().item() - 1.6) < 0.02
    assert (sigmas > 0).all()


def test_sigma_sampling_is_seeded():
    a = sample_sigmas(8, generator=torch.Generator().manual_seed(3))
    b = sample_sigmas(8, generator=torch.Generator().manual_seed(3))
    c = sample_sigmas(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
