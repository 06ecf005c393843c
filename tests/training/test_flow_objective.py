"""The flow-matching objective of the Wan backbone: shifted noise levels, determinism with a seeded
generator, the conditioning frame left out of the loss, and a tiny branch that learns on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from interdyn.models.wan.ti2v import encode_image_latents, encode_video_latents
from interdyn.training.flow_objective import (
    FlowMatchingObjective,
    FlowMatchingSettings,
    sample_sigmas,
    shift_sigmas,
)
from tests.models.wan.helpers import FRAMES, HEIGHT, WIDTH, inputs, tiny_branch, tiny_wan


@pytest.fixture(scope="module")
def setup():
    wan = tiny_wan(seed=0)
    wan.transformer.requires_grad_(False)
    x = inputs(seed=0, batch=2)
    video = torch.rand(2, FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        latents = encode_video_latents(wan.vae, video)
        image_latents = encode_image_latents(wan.vae, video[:, 0])
    return wan, latents, image_latents, x


def test_shift_and_sampling():
    u = torch.linspace(0, 1, 11)
    assert torch.equal(shift_sigmas(u, 1.0), u)
    shifted = shift_sigmas(u, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > u[1:-1]).all()  # towards high noise
    assert abs(shift_sigmas(torch.tensor(0.5), 5.0).item() - 5 / 6) < 1e-6
    draws = sample_sigmas(4096, FlowMatchingSettings(), torch.Generator().manual_seed(0))
    assert draws.min() > 0 and draws.max() < 1 and draws.median() > 0.75  # shift 5: median 5/6
    logit = sample_sigmas(8, FlowMatchingSettings(timestep_sampling="logit_normal", shift=1.0))
    assert logit.shape == (8,) and ((logit > 0) & (logit < 1)).all()
    with pytest.raises(ValueError, match="timestep_sampling"):
        FlowMatchingSettings(timestep_sampling="cosine")


def test_loss_is_deterministic_and_ignores_the_conditioning_frame(setup):
    wan, latents, image_latents, x = setup
    branch = tiny_branch(wan)
    objective = FlowMatchingObjective()

    def loss(lat: torch.Tensor, seed: int = 3) -> torch.Tensor:
        with torch.no_grad():
            return objective.compute_loss(
                wan.transformer, lat, image_latents, x["prompt_embeds"], branch, x["control"],
                generator=torch.Generator().manual_seed(seed),
            ).loss  # fmt: skip

    first = loss(latents)
    assert torch.equal(first, loss(latents)) and not torch.equal(first, loss(latents, seed=4))
    perturbed = latents.clone()
    perturbed[:, :, 0] += 10.0  # the first latent frame's target is not in the loss: TI2V conditions on it
    assert torch.equal(loss(perturbed), first)


def test_fixed_sigma_and_no_branch(setup):
    wan, latents, image_latents, x = setup
    out = FlowMatchingObjective().compute_loss(
        wan.transformer, latents, image_latents, x["prompt_embeds"], sigma=torch.tensor([0.2, 0.9])
    )
    assert torch.equal(out.sigma, torch.tensor([0.2, 0.9])) and out.per_sample.shape == (2,)
    with pytest.raises(ValueError, match="control"):
        FlowMatchingObjective().compute_loss(
            wan.transformer, latents, image_latents, x["prompt_embeds"], tiny_branch(wan)
        )


def test_one_step_lowers_the_loss_of_a_tiny_branch(setup):
    wan, latents, image_latents, x = setup
    torch.manual_seed(0)
    branch = tiny_branch(wan)
    objective = FlowMatchingObjective()
    optimizer = torch.optim.Adam(branch.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        return objective.compute_loss(
            wan.transformer, latents, image_latents, x["prompt_embeds"], branch, x["control"],
            generator=torch.Generator().manual_seed(11),
        ).loss  # fmt: skip

    before = loss()
    before.backward()
    assert all(p.grad is None for p in wan.transformer.parameters())
    assert branch.controlnet_blocks[0].weight.grad.abs().sum() > 0  # the zero projections get gradients
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after < before
