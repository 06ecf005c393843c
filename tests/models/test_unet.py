"""The residual-injecting UNet against diffusers' stock SVD UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from interdyn.models import ControlNetSDVModel, UNetSpatioTemporalControlModel
from tests.helpers import TINY_CONTROL_CHANNELS, ReleasedStyleUNet, unet_args, unet_inputs


def stock_copy(unet: UNetSpatioTemporalControlModel) -> UNetSpatioTemporalConditionModel:
    stock = UNetSpatioTemporalConditionModel.from_config(unet.config)
    stock.load_state_dict(unet.state_dict(), strict=True)
    return stock.eval()


def hook_residuals(stock: UNetSpatioTemporalConditionModel, residuals, mid) -> list:
    """Reference for 'each residual added once to its own skip': hooks on the *stock* UNet that add
    residual i to skip i where the up blocks consume it, and the mid residual to the mid output."""
    remaining = list(residuals)
    handles = []
    for block in stock.up_blocks:
        n = len(block.resnets)
        mine, remaining = tuple(remaining[-n:]), remaining[:-n]

        def pre(module, args, kwargs, mine=mine):
            skips = kwargs["res_hidden_states_tuple"]
            kwargs["res_hidden_states_tuple"] = tuple(s + r for s, r in zip(skips, mine, strict=True))
            return args, kwargs

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    assert not remaining
    handles.append(stock.mid_block.register_forward_hook(lambda m, a, out: out + mid))
    return handles


def random_residuals(unet: UNetSpatioTemporalControlModel, inputs: dict, seed: int = 3):
    """Residuals with the skip shapes of this UNet (taken from a branch forward)."""
    branch = ControlNetSDVModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS)
    with torch.no_grad():
        down, mid = branch(**inputs, return_dict=False)
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(r.shape, generator=gen) for r in down], torch.randn(mid.shape, generator=gen)


@torch.no_grad()
def test_without_residuals_equals_stock_unet(tiny_svd):
    inputs = unet_inputs()
    ours = tiny_svd.unet.eval()
    expected = stock_copy(ours)(**unet_args(inputs)).sample
    assert torch.equal(ours(**unet_args(inputs)).sample, expected)


@torch.no_grad()
def test_fresh_branch_leaves_output_bit_identical(tiny_svd):
    inputs = unet_inputs(seed=1)
    unet = tiny_svd.unet.eval()
    branch = ControlNetSDVModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONTROL_CHANNELS
    ).eval()
    down, mid = branch(**inputs, return_dict=False)
    assert all(torch.count_nonzero(r) == 0 for r in (*down, mid))
    out = unet(
        **unet_args(inputs), down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample
    assert torch.equal(out, stock_copy(unet)(**unet_args(inputs)).sample)


@torch.no_grad()
def test_residuals_match_hooked_stock_unet(tiny_svd):
    inputs = unet_inputs(seed=2)
    unet = tiny_svd.unet.eval()
    down, mid = random_residuals(unet, inputs)
    ours = unet(
        **unet_args(inputs), down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample
    stock = stock_copy(unet)
    plain = stock(**unet_args(inputs)).sample
    hook_residuals(stock, down, mid)
    reference = stock(**unet_args(inputs)).sample
    assert not torch.allclose(reference, plain, atol=1e-3)  # the residuals matter
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def skip_deltas(unet, inputs, residuals):
    """Per-skip change that the residuals cause, read after the down path (before the up blocks)."""
    with torch.no_grad():
        b, t = inputs["sample"].shape[:2]
        emb = unet.time_embedding(unet.time_proj(inputs["timestep"]))
        ids = unet.add_time_proj(inputs["added_time_ids"].flatten()).reshape(b, -1)
        emb = (emb + unet.add_embedding(ids)).repeat_interleave(t, 0)
        ctx = inputs["encoder_hidden_states"].repeat_interleave(t, 0)
        hidden = unet.conv_in(inputs["sample"].flatten(0, 1))
        ind = torch.zeros(b, t)
        _, base = unet._run_down_blocks(hidden, emb, ctx, ind, None)
        _, moved = unet._run_down_blocks(hidden, emb, ctx, ind, residuals)
    return [m - s for m, s in zip(moved, base, strict=True)]


def lands_once_on_its_skip(unet, inputs) -> bool:
    residuals = [torch.full_like(r, float(i + 1)) for i, r in enumerate(random_residuals(unet, inputs)[0])]
    deltas = skip_deltas(unet, inputs, residuals)
    return all(torch.allclose(d, r) for d, r in zip(deltas, residuals, strict=True))


def test_each_residual_lands_once_on_its_own_skip(tiny_svd):
    inputs = unet_inputs(seed=4)
    assert lands_once_on_its_skip(tiny_svd.unet.eval(), inputs)


def test_released_style_addition_fails_the_same_check(tiny_svd):
    released = ReleasedStyleUNet.from_config(tiny_svd.unet.config)
    released.load_state_dict(tiny_svd.unet.state_dict())
    assert not lands_once_on_its_skip(released.eval(), unet_inputs(seed=4))


def test_wrong_number_of_residuals_is_an_error(tiny_svd):
    inputs = unet_inputs()
    down, mid = random_residuals(tiny_svd.unet, inputs)
    with pytest.raises(ValueError, match="residuals"):
        tiny_svd.unet(
            **unet_args(inputs), down_block_additional_residuals=down[:-1], mid_block_additional_residual=mid
        )


def test_stock_svd_unet_weights_load_unchanged(tmp_path, tiny_svd):
    stock = stock_copy(tiny_svd.unet)
    stock.save_pretrained(tmp_path / "unet")
    loaded = UNetSpatioTemporalControlModel.from_pretrained(tmp_path / "unet")
    ref = stock.state_dict()
    assert set(loaded.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
