"""The Wan control branch: layer choice, copies of the frozen blocks, zero start, the mask encoder's
frame packing, save/load, and the transformer that takes its residuals."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import WanTransformer3DModel

from interdyn.models.wan import WanControlNetModel, check_clip_frames, select_layers
from interdyn.models.wan.ti2v import predict_flow, token_timesteps
from tests.models.wan.helpers import (
    FRAMES,
    HEIGHT,
    LATENT_SHAPE,
    TOKENS,
    WIDTH,
    inputs,
    randomize_projections_,
    tiny_branch,
)


def _call_inputs(wan, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, *LATENT_SHAPE, generator=gen)
    timestep = token_timesteps(torch.tensor(700.0), latents, wan.transformer.config.patch_size)
    return latents, timestep, inputs(seed)


def test_select_layers():
    assert select_layers(30) == list(range(15))  # the documented default: the first half
    assert select_layers(30, "every:5") == [0, 5, 10, 15, 20, 25]
    assert select_layers(30, "first:4") == [0, 1, 2, 3]
    assert select_layers(4, "all") == [0, 1, 2, 3]
    assert select_layers(4, [1, 3]) == [1, 3]
    for bad in ([3, 1], [0, 4], [], "every:0", "last:2"):
        with pytest.raises(ValueError):
            select_layers(4, bad)


def test_from_transformer_copies_the_chosen_blocks(wan):
    branch = tiny_branch(wan, layers=[1, 3])
    assert branch.layers == [1, 3]
    frozen = wan.transformer.state_dict()
    for j, layer in enumerate([1, 3]):
        for name, tensor in branch.blocks[j].state_dict().items():
            assert torch.equal(tensor, frozen[f"blocks.{layer}.{name}"]), name
    assert torch.equal(branch.patch_embedding.weight, wan.transformer.patch_embedding.weight)
    assert all(not p.any() for p in branch.controlnet_blocks.parameters())
    assert not branch.controlnet_cond_embedding.conv_out.weight.any()


def test_mask_encoder_maps_frames_to_the_token_grid(wan):
    """1 + 4k frames -> 1 + k latent frames, with frames 4j-3..4j in latent frame j (the VAE's packing)."""
    branch = randomize_projections_(tiny_branch(wan))
    control = inputs()["control"]
    with torch.no_grad():
        tokens = branch.embed_control(control)
        assert tokens.shape == (1, TOKENS, wan.transformer.config.num_attention_heads * 12)
        moved = control.clone()
        moved[:, 5:9] = -1.0  # frames of latent frame 2 only
        changed = (branch.embed_control(moved) - tokens).abs().amax(dim=(0, 2)).view(3, -1).amax(dim=1)
    assert changed[0] == 0 and changed[1] == 0 and changed[2] > 0


def test_wrong_mask_length_is_one_clear_sentence(wan):
    branch = tiny_branch(wan)
    with pytest.raises(ValueError) as err:
        branch.embed_control(torch.zeros(1, 8, 3, HEIGHT, WIDTH))
    message = str(err.value)
    assert "8 frames" in message and "1 + 4k" in message and "(e.g. 5 or 9)" in message
    assert "\n" not in message and not re.search(r"\.\s+[A-Z]", message) and message.endswith(".")
    assert check_clip_frames(FRAMES) == 3 and check_clip_frames(49) == 13 and check_clip_frames(1) == 1


def test_fresh_branch_adds_zero_and_a_trained_one_acts(wan):
    latents, timestep, x = _call_inputs(wan)
    with torch.no_grad():
        plain = wan.transformer(latents, timestep, x["prompt_embeds"], return_dict=False)[0]
        branch = tiny_branch(wan)
        fresh = predict_flow(
            wan.transformer, latents, timestep, x["prompt_embeds"], branch, control=x["control"]
        )
        acting = predict_flow(
            wan.transformer,
            latents,
            timestep,
            x["prompt_embeds"],
            randomize_projections_(branch),
            control=x["control"],
        )
    assert (fresh - plain).abs().max().item() < 1e-6
    assert (acting - plain).abs().mean().item() > 1e-3


def test_control_transformer_is_the_stock_model_and_adds_residuals_once(wan):
    latents, timestep, x = _call_inputs(wan)
    stock = WanTransformer3DModel.from_config(wan.transformer.config)
    stock.load_state_dict(wan.transformer.state_dict())
    with torch.no_grad():
        expected = stock(latents, timestep, x["prompt_embeds"], return_dict=False)[0]
        ours = wan.transformer(latents, timestep, x["prompt_embeds"], return_dict=False)[0]
        scalar_t = wan.transformer(latents, torch.tensor([500.0]), x["prompt_embeds"], return_dict=False)[0]
        stock_scalar_t = stock(latents, torch.tensor([500.0]), x["prompt_embeds"], return_dict=False)[0]
        tokens = wan.transformer.embed(latents, timestep, x["prompt_embeds"])
        residual = torch.randn_like(tokens.hidden_states)
        by_hand = tokens.hidden_states
        for i in range(len(wan.transformer.blocks)):
            by_hand = wan.transformer.run_block(i, by_hand, tokens) + (residual if i == 2 else 0)
        with_residual = wan.transformer(
            latents, timestep, x["prompt_embeds"], block_residuals={2: residual}, return_dict=False
        )[0]
    assert torch.equal(ours, expected) and torch.equal(scalar_t, stock_scalar_t)
    assert torch.allclose(with_residual, wan.transformer.head(by_hand, tokens), atol=1e-6)
    with pytest.raises(ValueError, match="blocks \\[9\\]"):
        wan.transformer(latents, timestep, x["prompt_embeds"], block_residuals={9: residual})


def test_save_and_load_round_trip(wan, tmp_path):
    branch = randomize_projections_(tiny_branch(wan, layers="every:2"))
    branch.save_pretrained(tmp_path)
    loaded = WanControlNetModel.from_pretrained(tmp_path)
    assert loaded.layers == [0, 2]
    assert list(loaded.config.conditioning_embedding_out_channels) == [8, 8, 8, 16]
    latents, timestep, x = _call_inputs(wan)
    with torch.no_grad():
        tokens = wan.transformer.embed(latents, timestep, x["prompt_embeds"])
        a = branch(latents, tokens, control=x["control"]).block_residuals
        b = loaded(latents, tokens, control=x["control"]).block_residuals
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_gradient_checkpointing_gives_the_same_gradients(wan):
    latents, timestep, x = _call_inputs(wan)

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)  # the same fresh mask encoder both times
        branch = randomize_projections_(tiny_branch(wan))
        if checkpointing:
            branch.enable_gradient_checkpointing()
        out = predict_flow(
            wan.transformer, latents, timestep, x["prompt_embeds"], branch, control=x["control"]
        )
        out.square().mean().backward()
        return [p.grad for p in branch.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(plain, checkpointed, strict=True))
