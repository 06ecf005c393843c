"""Importing the released InterDyn weights reproduces the behaviour they were trained with."""

from __future__ import annotations

import copy
import json

import torch

from interdyn.models import load_controlnet, released_multiplicities
from interdyn.models.released import fold_released_residuals, is_released
from tests.helpers import ReleasedStyleUNet, assert_same_model, released_folder, unet_args, unet_inputs


def test_multiplicities_for_svd_block_structure(trained_like_branch):
    assert released_multiplicities(trained_like_branch) == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]


@torch.no_grad()
def released_reference(tiny_svd, branch, inputs):
    """Output of the released pipeline: raw released weights + cumulative-addition UNet."""
    ref_unet = ReleasedStyleUNet.from_config(tiny_svd.unet.config)
    ref_unet.load_state_dict(tiny_svd.unet.state_dict())
    down, mid = branch(**inputs, return_dict=False)
    return ref_unet.eval()(
        **unet_args(inputs), down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample


@torch.no_grad()
def ours(tiny_svd, branch, inputs):
    down, mid = branch(**inputs, return_dict=False)
    unet = tiny_svd.unet.eval()
    return unet(
        **unet_args(inputs), down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample


def test_import_reproduces_released_behaviour(tmp_path, tiny_svd, trained_like_branch):
    inputs = unet_inputs(seed=7)
    expected = released_reference(tiny_svd, trained_like_branch, inputs)
    imported = load_controlnet(str(released_folder(tmp_path, trained_like_branch))).eval()
    torch.testing.assert_close(ours(tiny_svd, imported, inputs), expected, rtol=1e-4, atol=1e-5)
    # Without the conversion the outputs differ: the test can tell the two conventions apart.
    raw = load_controlnet(str(released_folder(tmp_path / "raw", trained_like_branch)), released=False).eval()
    assert not torch.allclose(ours(tiny_svd, raw, inputs), expected, atol=1e-3)


def test_converted_branch_is_not_converted_twice(tmp_path, tiny_svd, trained_like_branch):
    inputs = unet_inputs(seed=8)
    imported = load_controlnet(str(released_folder(tmp_path, trained_like_branch))).eval()
    imported.save_pretrained(tmp_path / "exported")
    reloaded = load_controlnet(str(tmp_path / "exported")).eval()
    assert_same_model(
        reloaded, imported, [(ours(tiny_svd, reloaded, inputs), ours(tiny_svd, imported, inputs))]
    )


def released_pipeline_folder(folder, tiny_svd, branch):
    """A saved InterDynPipeline whose controlnet/config.json is released-style (no residual_addition)."""
    from interdyn.models import InterDynPipeline

    InterDynPipeline.from_components(tiny_svd, branch).save_pretrained(folder)
    config_file = folder / "controlnet" / "config.json"
    config = json.loads(config_file.read_text())
    del config["residual_addition"]
    config_file.write_text(json.dumps(config))
    return folder


def folded(branch):
    expected = copy.deepcopy(branch)
    fold_released_residuals(expected)
    return expected.state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_from_a_local_folder_folds_released_weights(tmp_path, tiny_svd, trained_like_branch):
    from interdyn.models import InterDynPipeline

    folder = released_pipeline_folder(tmp_path / "pipe", tiny_svd, trained_like_branch)
    loaded = InterDynPipeline.from_pretrained(folder)
    assert_same_weights(loaded.controlnet.state_dict(), folded(trained_like_branch))
    # a folder written by this project (with the marker) is loaded as it is
    InterDynPipeline.from_components(tiny_svd, trained_like_branch).save_pretrained(tmp_path / "ours")
    ours_loaded = InterDynPipeline.from_pretrained(tmp_path / "ours")
    assert_same_weights(ours_loaded.controlnet.state_dict(), trained_like_branch.state_dict())


def test_pipeline_from_a_hub_id_folds_released_weights(tmp_path, tiny_svd, trained_like_branch):
    """A hub id gets the same rule as a local folder (served offline from a hub cache laid out as the hub
    client writes it)."""
    from interdyn.models import InterDynPipeline

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--acme--interdyn-test"
    released_pipeline_folder(repo / "snapshots" / commit, tiny_svd, trained_like_branch)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert is_released("acme/interdyn-test", "controlnet", cache_dir=str(tmp_path / "hub"))
    loaded = InterDynPipeline.from_pretrained("acme/interdyn-test", cache_dir=str(tmp_path / "hub"))
    assert_same_weights(loaded.controlnet.state_dict(), folded(trained_like_branch))
