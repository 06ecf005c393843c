"""The one-step probe (experiments.world.onestep) on the shipped world weights and real world test shards:
at low noise the predictions are the truths themselves, at very high noise the SVD without control
predicts one video per group (exactly chance), and the CLI writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "weights" / "world"


@pytest.fixture(scope="module")
def world_svd():
    from interdyn.models.svd import get_svd

    svd = get_svd(str(WORLD / "svd"))
    for part in (svd.unet, svd.vae, svd.image_encoder):
        part.float().eval()
    return svd


@pytest.fixture(scope="module")
def clips(world_test_shards: str) -> list[dict]:
    from interdyn.world.ceiling import grouped_clips

    return list(grouped_clips(world_test_shards, 64))


def test_at_low_noise_the_prediction_is_the_truth_through_the_vae(world_svd, clips) -> None:
    """sigma -> 0: the denoised output is the noisy input (c_skip -> 1), i.e. the VAE's reconstruction of the
    clip; a swapped or missing preconditioning term would give something else."""
    from experiments.world.onestep import onestep_videos
    from interdyn.models.conditioning import decode_latents, encode_video_posterior

    clip = clips[0]
    pixels, control = clip["pixel_values"][None], clip["control"][None]
    noise = torch.randn(1, 14, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    video = onestep_videos(world_svd, None, pixels, control, 1e-3, noise)
    with torch.no_grad():
        mean, _ = encode_video_posterior(world_svd.vae, pixels)
        reconstruction = (decode_latents(world_svd.vae, mean * world_svd.vae.config.scaling_factor) + 1) / 2
    assert video.shape == (1, 14, 3, 64, 64)
    assert torch.mean((video - reconstruction) ** 2) < 1e-4
    # and far from it at high noise, where the prediction is the model's own
    far = onestep_videos(world_svd, None, pixels, control, 50.0, noise)
    assert torch.mean((far - reconstruction) ** 2) > 10 * torch.mean((video - reconstruction) ** 2)


@pytest.mark.slow  # the probe's finding on 9 clips; its code path runs in the CLI test below
def test_without_control_high_noise_predicts_one_video_per_group(world_svd, clips) -> None:
    """Every member of a group shares its noise: at very high noise the SVD alone sees the same input for
    all of them and lands exactly at chance, while at low noise the noisy truths tell them apart. The shipped
    branch, given each member's control, makes their predictions differ at that level."""
    from experiments.world.onestep import onestep_counterfactual
    from interdyn.training.checkpoint import load_branch

    plain = onestep_counterfactual(world_svd, None, clips, sigmas=[0.05, 1e4])
    assert plain["protocol"] == {
        "clips": 9,
        "groups": 3,
        "seed": 0,
        "region": "outside_driver",
        "latents": "VAE posterior mean",
        "conditioning_scale": 0.0,
    }
    assert plain["reports"]["0.05"]["overall"]["accuracy"] >= 8 / 9
    assert plain["reports"]["10000"]["overall"]["accuracy"] == pytest.approx(1 / 3)
    # on the discs too: the noisy truths' discs follow their paths; one video per group (its discs found)
    # is right for exactly one member, the one whose discs it is nearest
    assert plain["reports"]["0.05"]["objects"]["overall"]["accuracy"] >= 8 / 9
    discs_high = plain["reports"]["10000"]["objects"]["overall"]
    assert discs_high["accuracy"] == pytest.approx(1 / 3) and discs_high["members_without_objects"] == 0
    high = plain["reports"]["10000"]["overall"]
    assert high["spread"] < 0.01 * high["gt_spread"]  # the same video for every member, to rounding

    branch = load_branch(str(WORLD / "branch"))[0].float().eval()
    driven = onestep_counterfactual(world_svd, branch, clips, sigmas=[1e4])
    # the control alone now makes the members' predictions differ
    driven_high = driven["reports"]["10000"]["overall"]
    assert driven_high["spread"] > 0.1 * driven_high["gt_spread"] > 10 * high["spread"]


def test_the_cli_writes_a_table_per_noise_level(world_test_shards: str, tmp_path: Path) -> None:
    from experiments.world.onestep import main

    args = ["--svd", str(WORLD / "svd"), "--test_shards", world_test_shards, "--out", str(tmp_path)]
    assert main([*args, "--sigmas", "0.5,10000", "--limit", "3"]) == 0
    text = (tmp_path / "onestep.md").read_text()
    main_table, by_member = text.split("Accuracy by group member")
    rows = [line.split("|")[1].strip() for line in main_table.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["0.5", "10000"]
    result = json.loads((tmp_path / "onestep.json").read_text())
    assert result["sigmas"] == [0.5, 10000.0] and result["protocol"]["clips"] == 3
    # at a noise level that drowns the clip, the SVD alone predicts one video for the group: chance
    assert result["reports"]["10000"]["overall"]["accuracy"] == pytest.approx(1 / 3)
    # one group of three: each member is right or wrong, and at sigma 0.5 all three are right
    assert result["reports"]["0.5"]["accuracy_by_variant"] == {"v0": 1.0, "v1": 1.0, "v2": 1.0}
    assert "| sigma | v0 | v1 | v2 |" in by_member
    assert "accuracy on the discs |" in main_table
    assert main_table.splitlines()[4].split("|")[-2].strip() == "1.000"  # sigma 0.5, on the discs

    assert main([*args, "--sigmas", "0,5"]) == 2  # a clear error, not a traceback
    assert main([*args, "--size", "62", "--limit", "3"]) == 2  # 62 does not divide by the VAE's 4
    with pytest.raises(SystemExit):
        main([*args, "--sigmas", "five"])


def test_accuracy_by_variant_needs_every_pair_of_a_member_right() -> None:
    from experiments.world.onestep import accuracy_by_variant

    clips = [{"key": f"g{g}_v{v}", "variant": v} for g in range(2) for v in range(2)] + [
        {"key": "x", "variant": None}
    ]
    pairs = [
        {"member": "g0_v0", "correct": 1.0},
        {"member": "g0_v0", "correct": 1.0},
        {"member": "g1_v0", "correct": 1.0},
        {"member": "g1_v0", "correct": 0.0},  # one wrong pair: that member is wrong
        {"member": "g0_v1", "correct": 0.5},  # a tie is not right
        {"member": "g1_v1", "correct": 1.0},
        {"member": "g1_v1", "correct": float("nan")},  # skipped
        {"member": "x", "correct": 1.0},  # no variant: left out
    ]
    assert accuracy_by_variant(pairs, clips) == {"v0": 0.5, "v1": 0.5}
