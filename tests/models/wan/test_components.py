"""The Wan2.2 TI2V parts: the tiny model's geometry (48 latent channels, x4 in time after the first frame,
x16 in space), folders in the diffusers layout, the full-size architecture on the meta device, and the
fixed prompt embedding."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

from interdyn.errors import ConfigError, WeightsNotFoundError
from interdyn.models.wan import (
    WAN22_TI2V_ARCHITECTURE,
    WanControlNetModel,
    WanTransformer3DControlModel,
    build_wan,
    get_wan,
    load_prompt_embeds,
    load_wan,
    save_prompt_embeds,
    save_wan,
    zero_prompt_embeds,
)
from interdyn.models.wan.components import TINY_WAN_ARCHITECTURE
from interdyn.models.wan.prompt import encode_prompt
from interdyn.models.wan.ti2v import (
    denormalize_latents,
    encode_image_latents,
    encode_video_latents,
    normalize_latents,
    token_timesteps,
)
from tests.models.wan.helpers import FRAMES, HEIGHT, LATENT_SHAPE, WIDTH


def test_tiny_vae_has_ti2v_geometry(wan):
    video = torch.rand(1, FRAMES, 3, HEIGHT, WIDTH) * 2 - 1
    with torch.no_grad():
        latents = encode_video_latents(wan.vae, video)
        first = encode_image_latents(wan.vae, video[:, 0])
    assert latents.shape == (1, *LATENT_SHAPE)
    assert first.shape == (1, 48, 1, *LATENT_SHAPE[2:])
    # the VAE is causal: the first latent frame is the first frame's alone (TI2V's conditioning latent)
    assert torch.allclose(latents[:, :, :1], first, atol=1e-5)
    assert torch.allclose(
        denormalize_latents(wan.vae, normalize_latents(wan.vae, latents)), latents, atol=1e-5
    )
    assert wan.vae.config.scale_factor_spatial == 16 and wan.vae.config.scale_factor_temporal == 4
    assert isinstance(wan.scheduler, UniPCMultistepScheduler) and wan.scheduler.config.flow_shift == 5.0


def test_token_timesteps_are_zero_on_the_first_frame():
    latents = torch.zeros(2, 48, 3, 4, 6)
    t = token_timesteps(torch.tensor([100.0, 900.0]), latents, (1, 2, 2))
    assert t.shape == (2, 18)
    assert (t[:, :6] == 0).all() and (t[0, 6:] == 100).all() and (t[1, 6:] == 900).all()


def test_save_load_and_diffusers_reads_the_folder(wan, tmp_path):
    save_wan(wan, tmp_path)
    assert json.loads((tmp_path / "transformer" / "config.json").read_text())["_class_name"] == (
        "WanTransformer3DModel"
    )
    loaded = load_wan(str(tmp_path))
    assert isinstance(loaded.transformer, WanTransformer3DControlModel)
    for a, b in zip(
        loaded.transformer.state_dict().values(), wan.transformer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert loaded.scheduler.config.flow_shift == 5.0
    stock = WanImageToVideoPipeline.from_pretrained(str(tmp_path), text_encoder=None, tokenizer=None)
    assert stock.config.expand_timesteps and stock.text_encoder is None
    assert torch.equal(stock.transformer.proj_out.weight, wan.transformer.proj_out.weight)
    assert get_wan(str(tmp_path)).vae.config.z_dim == 48


def test_missing_folder_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers"):
        load_wan(str(tmp_path / "nowhere"))


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown Wan preset"):
        get_wan("random:nope")
    with pytest.raises(ConfigError, match="unknown Wan config entries"):
        build_wan({"unet": {}})
    bad = {
        **TINY_WAN_ARCHITECTURE,
        "transformer": {**TINY_WAN_ARCHITECTURE["transformer"], "in_channels": 16},
    }
    with pytest.raises(ConfigError, match="must equal vae.z_dim"):
        build_wan(bad)


def test_full_size_architecture_on_the_meta_device():
    with torch.device("meta"):
        wan = build_wan(WAN22_TI2V_ARCHITECTURE)
        branch = WanControlNetModel.from_transformer(wan.transformer)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(wan.transformer) == 4_999_787_712  # Wan2.2 TI2V-5B
    assert wan.transformer.config.num_layers == 30 and wan.vae.config.z_dim == 48
    assert branch.layers == list(range(15)) and count(branch) == 2_609_983_456
    assert wan.transformer.proj_out.weight.is_meta and len(wan.scheduler.timesteps) == 1000


class _StubTokenizer:
    def __call__(self, prompts, max_length, **_):
        ids = torch.zeros(1, max_length, dtype=torch.long)
        ids[0, :3] = torch.tensor([5, 6, 1])
        mask = (torch.arange(max_length) < 3).long()[None]
        return type("Tokens", (), {"input_ids": ids, "attention_mask": mask})()


def test_prompt_embeddings(tmp_path):
    assert not zero_prompt_embeds(32).any() and zero_prompt_embeds(32).shape == (1, 512, 32)
    from transformers import UMT5Config, UMT5EncoderModel

    encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=16, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )
    embeds = encode_prompt("a hand", _StubTokenizer(), encoder, length=8)
    assert embeds.shape == (1, 8, 32) and embeds[0, :3].abs().sum() > 0 and not embeds[0, 3:].any()
    save_prompt_embeds(embeds, tmp_path / "prompt.safetensors", prompt="a hand")
    assert torch.equal(load_prompt_embeds(tmp_path / "prompt.safetensors"), embeds)
