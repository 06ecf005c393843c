"""The Wan backbone's training module: it trains the branch and nothing else, its checkpoints hold only the
branch and resume, its test stage samples and scores videos, and its settings refuse what cannot run."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from interdyn.errors import BatchContractError, ConfigError, WeightsMismatchError, WeightsNotFoundError
from interdyn.training.checkpoint import BRANCH_PREFIX, CONFIG_KEY, load_checkpoint
from interdyn.training.wan_module import BACKBONE_KEY, WAN_BACKBONE, video_errors
from tests.training.wan.helpers import FRAMES, SIZE, quiet_trainer, tiny_wan_module, toy_data


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _state(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def test_fit_trains_only_the_branch_and_its_checkpoint_resumes(tmp_path):
    torch.manual_seed(0)
    module = tiny_wan_module(layers="first:1")
    frozen, branch = _state(module.transformer, module.vae), _state(module.controlnet)
    assert not any(p.requires_grad for p in [*module.transformer.parameters(), *module.vae.parameters()])
    losses = _Losses()
    trainer = quiet_trainer(callbacks=[losses], default_root_dir=tmp_path)
    trainer.fit(module, toy_data())
    assert len(losses.losses) == 2 and all(torch.isfinite(torch.tensor(losses.losses)))
    after = _state(module.transformer, module.vae)
    assert all(torch.equal(after[k], frozen[k]) for k in frozen)
    moved = {k for k, v in _state(module.controlnet).items() if not torch.equal(v, branch[k])}
    assert "0.controlnet_blocks.0.weight" in moved  # the zero projection moved: the branch now acts
    assert not module.transformer.training and not module.vae.training

    path = tmp_path / "wan.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = load_checkpoint(path)
    assert checkpoint[BACKBONE_KEY] == WAN_BACKBONE and list(checkpoint[CONFIG_KEY]["layers"]) == [0]
    assert set(checkpoint["state_dict"]) == {BRANCH_PREFIX + k for k in module.controlnet.state_dict()}
    assert checkpoint["hyper_parameters"]["wan"] == "random:wan-tiny" and "optimizer_states" in checkpoint

    torch.manual_seed(1)  # another fresh branch, replaced by the checkpoint's
    resumed = tiny_wan_module(layers="first:1")
    quiet_trainer(default_root_dir=tmp_path).fit(resumed, toy_data(), ckpt_path=str(path))
    assert resumed.global_step == 2  # resumed at the end: nothing left to train, the loaded weights kept
    saved = checkpoint["state_dict"]
    assert all(torch.equal(v, saved[BRANCH_PREFIX + k]) for k, v in resumed.controlnet.state_dict().items())
    assert all(torch.equal(v, frozen[f"0.{k}"]) for k, v in resumed.transformer.state_dict().items())


def test_a_checkpoint_of_another_backbone_is_one_sentence():
    with pytest.raises(WeightsMismatchError, match="trained on the svd backbone"):
        tiny_wan_module().on_load_checkpoint({"state_dict": {}})


def test_test_samples_each_clip_and_scores_it_inside_the_driver_masks():
    result = quiet_trainer().test(tiny_wan_module(), toy_data(), verbose=False)[0]
    assert set(result) == {"test/loss", "test/video_mse", "test/mask_mse"}
    assert all(0 < v < float("inf") for v in result.values())
    videos = torch.zeros(1, 3, 3, 4, 4)
    pixels = -torch.ones(1, 3, 3, 4, 4)
    pixels[:, 1:, :, 0, 0] = 1.0  # the one masked pixel is wrong by 1, the 15 others are right
    control = -torch.ones(1, 3, 3, 4, 4)
    control[:, 1:, :, 0, 0] = 1.0
    video_mse, mask_mse = video_errors(videos, pixels, control)
    assert torch.allclose(video_mse, torch.tensor([1 / 16])) and torch.allclose(mask_mse, torch.tensor([1.0]))


def test_per_input_seeds_give_each_input_the_videos_it_gets_alone():
    module = tiny_wan_module(sampling={"num_inference_steps": 1})
    data = toy_data(num_test=2)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    pixels, control = batch["pixel_values"], batch["control"]
    together = module.sample(pixels, control, seed=[3, 4], num_videos_per_prompt=2)
    alone = module.sample(pixels[1:], control[1:], seed=[4], num_videos_per_prompt=2)
    assert together.shape == (2, 2, FRAMES, 3, SIZE, SIZE)
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)
    assert not torch.equal(together[1, 0], together[1, 1])  # an input's videos differ from each other


def test_settings_and_clips_that_cannot_run_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="shift must be positive"):
        tiny_wan_module(objective={"shift": 0})
    with pytest.raises(ConfigError, match="layer choice"):
        tiny_wan_module(layers="middle")
    with pytest.raises(WeightsNotFoundError, match="prompt embedding file"):
        tiny_wan_module(prompt_embeds=str(tmp_path / "none.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="hf download"):
        tiny_wan_module(wan=str(tmp_path / "no-wan-here"))
    module = tiny_wan_module()
    with pytest.raises(ConfigError, match="needs 1 \\+ 4k frames"):
        quiet_trainer().fit(module, toy_data(num_frames=8))
    with pytest.raises(ConfigError, match="multiples of 32"):
        quiet_trainer().fit(module, toy_data(height=48))
    batch = {"pixel_values": torch.zeros(1, 6, 3, 32, 32), "control": -torch.ones(1, 6, 3, 32, 32)}
    with pytest.raises(BatchContractError, match="use e.g. 5 or 9"):
        module.training_step(batch, 0)


def test_prompt_guidance_samples_away_from_the_negative_prompt_embedding(tmp_path):
    """``sampling.guidance_scale`` with ``negative_prompt_embeds``: the module's videos are the pipeline's
    guided ones for the two files (the pipeline's guidance is diffusers' own, tests/models/wan/test_oracle.py),
    not the unguided ones; the protocol says so; a scale without a negative embedding, or below 1, is refused."""
    from interdyn.models.wan import save_prompt_embeds

    noise = torch.Generator().manual_seed(0)
    prompt, negative = torch.randn(1, 8, 32, generator=noise), torch.randn(1, 8, 32, generator=noise)
    save_prompt_embeds(prompt, tmp_path / "prompt.safetensors")
    save_prompt_embeds(negative, tmp_path / "negative.safetensors")
    files = {"prompt_embeds": str(tmp_path / "prompt.safetensors")}
    files["negative_prompt_embeds"] = str(tmp_path / "negative.safetensors")
    module = tiny_wan_module(sampling={"num_inference_steps": 2, "guidance_scale": 4.0}, **files)
    assert module.sampling_protocol()["guidance"] == "prompt 4"
    data = toy_data()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    pixels, control = batch["pixel_values"][:1], batch["control"][:1]

    guided = module.sample(pixels, control, seed=3, num_videos_per_prompt=1)[:, 0]
    plain = module.sample(pixels, control, seed=3, num_videos_per_prompt=1, guidance_scale=1.0)[:, 0]
    expected = module.pipeline()(
        pixels[:, 0], prompt, control=control, negative_prompt_embeds=negative, guidance_scale=4.0,
        num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt",
    ).frames  # fmt: skip
    torch.testing.assert_close(guided, expected.float(), rtol=0, atol=1e-6)
    assert (guided - plain).abs().max() > 1e-3, "guidance changes the videos"

    with pytest.raises(ConfigError, match="set model negative_prompt_embeds"):
        tiny_wan_module(sampling={"guidance_scale": 4.0})
    with pytest.raises(ConfigError, match="guidance_scale must be >= 1"):
        tiny_wan_module(sampling={"guidance_scale": 0.5})
    with pytest.raises(WeightsNotFoundError, match="negative_prompt_embeds"):
        tiny_wan_module(
            negative_prompt_embeds=str(tmp_path / "none.safetensors"), sampling={"guidance_scale": 2.0}
        )
    unguided = tiny_wan_module(
        negative_prompt_embeds=str(tmp_path / "none.safetensors")
    )  # read only to guide
    assert unguided.negative_prompt_embeds is None
