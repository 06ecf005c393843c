"""The control branch: construction from a UNet, the released checkpoint's layout, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from interdyn.errors import WeightsMismatchError, WeightsNotFoundError
from interdyn.models import ControlNetSDVModel, load_controlnet
from tests.helpers import (
    RELEASED_CONFIG_FIELDS,
    TINY_CONTROL_CHANNELS,
    assert_same_model,
    randomize_,
    released_folder,
    unet_inputs,
)

# Config fields of the released checkpoint's config.json (hub repo rickakkerman/InterDyn, controlnet/).


def released_top_level_names() -> set[str]:
    """Parameter-holding module names of the released layout (time_proj/add_time_proj have none)."""
    return {
        "conv_in",
        "time_embedding",
        "add_embedding",
        "down_blocks",
        "mid_block",
        "controlnet_cond_embedding",
        "controlnet_down_blocks",
        "controlnet_mid_block",
    }


def test_from_unet_copies_every_shared_encoder_weight(tiny_svd):
    unet = randomize_(tiny_svd.unet, seed=5)
    branch = ControlNetSDVModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS)
    unet_state = unet.state_dict()
    shared = [
        k
        for k in branch.state_dict()
        if k.split(".")[0] in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
    ]
    assert any(k.startswith("add_embedding.") for k in shared)
    assert len(shared) > 100
    for key in shared:
        assert torch.equal(branch.state_dict()[key], unet_state[key]), key


def test_control_convs_start_at_zero(tiny_svd):
    branch = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    zero = [
        branch.controlnet_cond_embedding.conv_out,
        branch.controlnet_mid_block,
        *branch.controlnet_down_blocks,
    ]
    assert all(torch.count_nonzero(p) == 0 for m in zero for p in m.parameters())
    # ...but the control encoder's inner convs are not zero, so gradients reach them.
    assert torch.count_nonzero(branch.controlnet_cond_embedding.conv_in.weight) > 0


def test_layout_matches_the_released_checkpoint(tiny_svd):
    branch = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    keys = set(branch.state_dict())
    assert {k.split(".")[0] for k in keys} == released_top_level_names()
    cond_blocks = {k.split(".")[2] for k in keys if k.startswith("controlnet_cond_embedding.blocks.")}
    assert cond_blocks == {str(i) for i in range(6)}
    zero_convs = {k.split(".")[1] for k in keys if k.startswith("controlnet_down_blocks.")}
    assert zero_convs == {str(i) for i in range(12)}
    assert RELEASED_CONFIG_FIELDS <= set(branch.config)
    assert branch.config.in_channels == 8 and branch.config.conditioning_channels == 3


def test_full_size_branch_matches_spec_parameter_count():
    """The full SVD branch (a copy of the UNet's encoder half) has 682,021,537 parameters (meta device: no memory used)."""
    with torch.device("meta"):
        branch = ControlNetSDVModel(num_frames=14)
    assert sum(p.numel() for p in branch.parameters()) == 682_021_537
    assert branch.skips_per_block == [4, 3, 3, 2]


def test_save_and_load_round_trip(tmp_path, trained_like_branch):
    trained_like_branch.save_pretrained(tmp_path / "branch")
    loaded = load_controlnet(str(tmp_path / "branch")).eval()
    assert loaded.config.residual_addition == "single"
    inputs = unet_inputs()
    with torch.no_grad():
        a = trained_like_branch(**inputs, return_dict=False)
        b = loaded(**inputs, return_dict=False)
    assert_same_model(loaded, trained_like_branch, list(zip((*b[0], b[1]), (*a[0], a[1]), strict=True)))


def test_released_folder_loads_strictly(tmp_path, trained_like_branch):
    root = released_folder(tmp_path, trained_like_branch)
    loaded = load_controlnet(str(root))  # finds controlnet/ by itself
    assert set(loaded.state_dict()) == set(trained_like_branch.state_dict())


def test_checkpoint_with_a_missing_tensor_is_refused(tmp_path, trained_like_branch):
    root = released_folder(tmp_path, trained_like_branch)
    weights = root / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = {
        k: v.contiguous()
        for k, v in trained_like_branch.state_dict().items()
        if "controlnet_mid_block" not in k
    }
    save_file(state, weights)
    with pytest.raises(WeightsMismatchError, match="controlnet_mid_block"):
        load_controlnet(str(root))


def test_missing_folder_gives_one_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_controlnet(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "does not exist" in message and "rickakkerman/InterDyn" in message


def test_unknown_hub_id_offline_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="control branch"):
        load_controlnet("someone/not-a-real-interdyn-repo")


def test_control_channel_count_follows_config(tiny_svd):
    branch = ControlNetSDVModel.from_unet(
        tiny_svd.unet, conditioning_channels=5, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    )
    assert branch.controlnet_cond_embedding.conv_in.in_channels == 5
    inputs = unet_inputs(control_channels=5)
    down, mid = branch(**inputs, return_dict=False)
    assert len(down) == 12 and mid.shape[0] == inputs["sample"].shape[0] * inputs["sample"].shape[1]
