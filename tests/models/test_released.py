"""Importing the released InterDyn weights reproduces the behaviour they were trained with."""

from __future__ import annotations

import torch

from interdyn.models import load_controlnet, released_multiplicities
from tests.conftest import unet_args, unet_inputs
from tests.models.test_controlnet import released_folder
from tests.models.test_unet import ReleasedStyleUNet


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
    assert torch.equal(ours(tiny_svd, reloaded, inputs), ours(tiny_svd, imported, inputs))
