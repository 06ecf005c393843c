"""One objective: the world's SVD trainer (no branch) and InterDyn's module with the branch at scale 0
compute the same EDM loss, through the same code, on the same batch and seed."""

from __future__ import annotations

import torch

from interdyn.models.svd import TINY_ARCHITECTURE
from interdyn.training.module import InterDynModule
from interdyn.world.base import BaseVideoModule
from tests.helpers import TINY_CONTROL_CHANNELS, toy_batch


def test_the_base_trainer_and_a_branch_at_scale_0_give_the_same_loss(tiny_svd_folder):
    base = BaseVideoModule(
        vae=str(tiny_svd_folder / "vae"),
        unet=TINY_ARCHITECTURE["unet"],
        image_encoder=TINY_ARCHITECTURE["image_encoder"],
        init_from=str(tiny_svd_folder),
        ema_decay=0.0,
    ).eval()
    branch = InterDynModule(
        svd=str(tiny_svd_folder),
        conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS,
        sampling={"conditioning_scale": 0.0},
    ).eval()
    # The same frozen networks in both (weights read into other memory would round sums differently):
    # what is compared is the objective's code, with and without the branch.
    branch.unet, branch.vae, branch.image_encoder = base.unet, base.vae, base.image_encoder
    with torch.no_grad():  # a branch that would change the output at scale 1
        for p in branch.controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.5)
    batch = toy_batch(n=2, frames=3)
    for kwargs in ({"drop_image": True}, {"sigma": torch.tensor([0.3, 4.0])}):
        losses = [
            module.compute_loss(
                batch["pixel_values"], batch["control"], generator=torch.Generator().manual_seed(5), **kwargs
            )
            for module in (base, branch)
        ]
        assert torch.equal(losses[0], losses[1]), kwargs
    # the branch does take part at scale 1: the test above would notice a branch that was skipped
    branch.hparams.sampling["conditioning_scale"] = 1.0
    scaled = branch.compute_loss(
        batch["pixel_values"], batch["control"], generator=torch.Generator().manual_seed(5)
    )
    unscaled = base.compute_loss(batch["pixel_values"], None, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(scaled, unscaled)


def test_the_world_takes_its_defaults_from_the_owners():
    from interdyn.models.sampling import DEFAULT_SAMPLING
    from interdyn.training.settings import DEFAULT_OBJECTIVE

    base_defaults = BaseVideoModule.__init__.__defaults__
    assert DEFAULT_SAMPLING in base_defaults and DEFAULT_OBJECTIVE in base_defaults
