"""Training a context branch in the module: the setting, the start from a plain branch (equal to it), the
random number of known frames per sample, gradients into the new weights, and the branch in checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interdyn.data import MovingShapesDataModule
from interdyn.errors import ConfigError
from interdyn.models import ControlNetSDVModel
from interdyn.training.checkpoint import branch_from_checkpoint, load_branch
from interdyn.training.settings import ObjectiveSettings
from tests.helpers import randomize_, short_fit_trainer, tiny_module, toy_batch


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_the_setting_is_checked(bad) -> None:
    with pytest.raises(ConfigError, match="context_frames_max must be a whole number of frames >= 0"):
        ObjectiveSettings(context_frames_max=bad)


def _loss(module, batch: dict) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.5, 2.0])
    return module.compute_loss(batch["pixel_values"], batch["control"], sigma=sigma, generator=generator)


def test_a_context_branch_starts_equal_to_its_branch_and_learns_from_the_context(
    tiny_branch_folder: Path,
) -> None:
    batch = toy_batch(frames=6)
    plain = tiny_module(controlnet=str(tiny_branch_folder))
    module = tiny_module(controlnet=str(tiny_branch_folder), context_frames_max=3)
    branch = module.controlnet
    assert branch.is_context_branch and branch.config.context_frames == 3
    assert branch.config.context_window == 14, "the base's window is recorded"
    assert module.branch_ema is None or module.branch_ema.is_context_branch
    assert torch.equal(_loss(plain, batch), _loss(module, batch)), "fine-tuning starts equal to the branch"
    # k is drawn per sample from 0 to 3 (each sample's first k clean latents known)
    latents = torch.randn(4000, 6, 1, 1, 1)
    known = module.context(latents)[:, :, -1].flatten(1)  # the mask channel
    counts = known.sum(1)
    assert set(counts.tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(known, (torch.arange(6) < counts[:, None]).float()), "the first k frames"
    module.train()
    torch.manual_seed(
        0
    )  # a draw where some sample has k > 0 (k = 0 everywhere, 1 in 16, gives the weights none)
    loss = module.compute_loss(batch["pixel_values"], batch["control"], drop_image=True)  # random k
    loss.backward()
    grad = branch.controlnet_context_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "the new weights learn"
    assert branch.controlnet_context_embedding.bias.grad.abs().sum() > 0


def test_settings_the_base_cannot_take_are_one_sentence(tiny_svd, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^context_frames_max must be smaller than the model's window of 14"
    ):
        tiny_module(context_frames_max=14)
    plain = ControlNetSDVModel.from_unet(tiny_svd.unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    ControlNetSDVModel.from_branch(plain, 4, 25).save_pretrained(tmp_path / "xt")
    with pytest.raises(ConfigError, match=r"^the context branch was trained on windows of 25 frames, .* 14"):
        tiny_module(controlnet=str(tmp_path / "xt"))


def test_a_checkpoint_holds_the_context_branch() -> None:
    module = tiny_module(context_frames_max=2)
    randomize_(module.controlnet.controlnet_context_embedding, seed=4)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # what every training checkpoint keeps of the module
    branch = branch_from_checkpoint(checkpoint, weights="live")
    assert (
        branch.is_context_branch and branch.config.context_frames == 2 and branch.config.context_window == 14
    )
    state = module.controlnet.state_dict()
    assert branch.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in branch.state_dict().items())


@pytest.mark.slow
def test_a_fitted_context_branch_is_stored_and_read_back(tmp_path: Path) -> None:
    module = tiny_module(context_frames_max=2)
    trainer = short_fit_trainer(max_steps=1, limit_val_batches=0, logger=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=MovingShapesDataModule(num_train=2, num_val=2, num_frames=4, batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    branch, _ = load_branch(str(tmp_path / "last.ckpt"))
    assert branch.is_context_branch and branch.config.context_frames == 2
    state = module.controlnet.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in branch.state_dict().items())
    resumed = tiny_module(context_frames_max=2)  # what a resume builds, then loads the checkpoint into
    assert resumed.controlnet.state_dict().keys() == state.keys()
