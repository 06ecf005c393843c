"""EDM sigma sampling, preconditioning and loss against hand-computed values (the paper's EDM recipe)."""

from __future__ import annotations

import math

import pytest
import torch

from interdyn.models.edm import edm_loss, loss_weight, motion_weights, precondition, sample_sigmas


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


def test_constant_weights_leave_the_loss_unchanged_and_weights_move_it():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, 3, 4, 5, 5, generator=gen)
    pred = target + torch.randn(target.shape, generator=gen)
    sigma = torch.tensor([0.5, 3.0])
    plain = edm_loss(pred, target, sigma)
    torch.testing.assert_close(edm_loss(pred, target, sigma, torch.full((2, 3, 1, 5, 5), 7.0)), plain)
    # Sample 0 weighted evenly, sample 1 all on one position: the mean of sample 0's plain loss and that
    # position's EDM-weighted error (mean over channels); each sample counts once, whatever its weights.
    weights = torch.zeros(2, 3, 1, 5, 5)
    weights[0] = 3.0
    weights[1, 2, 0, 3, 4] = 1.0
    first = edm_loss(pred[:1], target[:1], sigma[:1])
    one = loss_weight(sigma[1]) * ((pred - target)[1, 2, :, 3, 4] ** 2).mean()
    torch.testing.assert_close(edm_loss(pred, target, sigma, weights), (first + one) / 2)
    # per sample: two halves of the batch average to the whole batch's loss
    w = torch.rand(2, 3, 1, 5, 5, generator=gen) + 0.5
    halves = [edm_loss(pred[i : i + 1], target[i : i + 1], sigma[i : i + 1], w[i : i + 1]) for i in (0, 1)]
    torch.testing.assert_close(edm_loss(pred, target, sigma, w), (halves[0] + halves[1]) / 2)


def test_motion_weights_mark_where_the_clip_changes():
    still = torch.randn(1, 1, 3, 6, 6).expand(2, 4, 3, 6, 6).clone()  # every frame the same
    assert motion_weights(still[:1], 9.0).eq(1.0).all()
    moving = still.clone()
    moving[1, 2:, :, 1, 4] += 2.0  # one position changes from frame 2 on, in the second clip
    moving[1, 3, :, 5, 0] += 1.0  # another, half as much, in the last frame
    w = motion_weights(moving, 9.0)
    assert w.shape == (2, 4, 1, 6, 6)
    assert w[0].eq(1.0).all()  # a still clip in the batch is not weighted by the other's motion
    torch.testing.assert_close(w[1, 2:, 0, 1, 4], torch.full((2,), 10.0))
    torch.testing.assert_close(w[1, 3, 0, 5, 0], torch.tensor(5.5))
    assert (w[1] > 1).sum() == 3
    with pytest.raises(ValueError):
        motion_weights(moving, -1.0)
    with pytest.raises(ValueError, match="B, T, C, h, w"):
        motion_weights(moving[0], 9.0)  # one clip without its batch axis
