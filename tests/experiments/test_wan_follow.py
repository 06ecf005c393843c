"""The Wan backbone's learning proof (experiments.world.wan_follow): a branch trained by the real Wan module on
16 world clips (counterfactual groups: one first frame, several driver paths) follows its driver masks.
The parts are checked quickly; the whole run is slow (about 10 minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_driver_cells_pack_frames_as_the_vae_does() -> None:
    """The first frame fills latent frame 0 alone, then 4 frames per latent frame; a driver pixel anywhere in a
    16 x 16 cell marks the cell."""
    from experiments.world.wan_follow import driver_cells

    control = -torch.ones(1, 9, 3, 32, 32)
    control[0, 0, :, 0, 0] = 1  # frame 0, cell (0, 0)
    control[0, 3, :, 20, 5] = 1  # frame 3 (latent frame 1), cell (1, 0)
    control[0, 8, :, 31, 31] = 1  # frame 8 (latent frame 2), cell (1, 1)
    cells = driver_cells(control)
    assert cells.shape == (1, 1, 3, 2, 2)
    assert cells[0, 0, 0].tolist() == [[1, 0], [0, 0]]
    assert cells[0, 0, 1].tolist() == [[0, 0], [1, 0]]
    assert cells[0, 0, 2].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        driver_cells(control[:, :8])


def test_siblings_stay_inside_their_group() -> None:
    from experiments.world.wan_follow import siblings

    groups = ["a", "a", "a", "b", "b"]
    mates = siblings(groups)
    assert mates == [1, 2, 0, 4, 3]
    assert all(groups[m] == g and m != i for i, (m, g) in enumerate(zip(mates, groups, strict=True)))


def test_calibrated_latents_have_unit_variance_per_channel(world_test_shards: str) -> None:
    """After calibration the clips' latents are centred with unit spread in every channel (the random VAE's
    raw latents are not), so flow matching's unit noise does not drown the clips' differences."""
    from experiments.world.wan_follow import calibrate_latents
    from interdyn.models.wan.components import build_wan
    from interdyn.models.wan.ti2v import encode_video_latents
    from interdyn.world.ceiling import test_clips

    pixels = torch.stack(
        [c["pixel_values"] for c in test_clips(world_test_shards, 64, limit=3, num_frames=9)]
    )
    vae = build_wan({"seed": 0}).vae
    before = encode_video_latents(vae, pixels).std(dim=(0, 2, 3, 4))
    calibrate_latents(vae, pixels)
    latents = encode_video_latents(vae, pixels)
    assert not torch.allclose(before, torch.ones_like(before), atol=0.2)
    torch.testing.assert_close(latents.mean(dim=(0, 2, 3, 4)), torch.zeros(48), atol=1e-4, rtol=0)
    torch.testing.assert_close(latents.std(dim=(0, 2, 3, 4)), torch.ones(48), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_wan_branch_trained_on_world_groups_follows_its_masks(tmp_path: Path) -> None:
    """The documented run (docs/backbones.md): inside the driver's latent cells on the training groups,
    - with its own masks the sample is well below the frozen model without control;
    - given a sibling's masks (same first frame, another driver path) it is far from its own clip and
      close to the sibling's: the video goes where the masks go, which remembering scenes cannot do."""
    from experiments.world.wan_follow import FollowSettings, run

    results = run(tmp_path, FollowSettings(), log=lambda _: None, progress=False)
    train = results["train"]
    assert train["control"] < 0.6 * train["no branch"], train
    assert train["control"] < 0.75 * train["sibling masks"], train
    assert train["follows sibling"] < 0.75 * train["sibling masks"], train
    assert train["control"] < train["blank masks"], train
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["train"] == train
    assert (tmp_path / "base" / "transformer" / "config.json").exists()
