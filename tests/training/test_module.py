"""The LightningModule: training objective, frozen parts, validation determinism, batch checks."""

from __future__ import annotations

import copy

import pytest
import torch

from interdyn.errors import BatchContractError, ConfigError, WeightsNotFoundError
from interdyn.training.module import InterDynModule
from tests.helpers import tiny_module, toy_batch


def fixed_loss(module: InterDynModule, batch: dict) -> float:
    with torch.no_grad():
        return module._fixed_loss(batch, batch_idx=0, dataloader_idx=0)[0].item()


def test_training_lowers_loss_and_changes_only_the_branch():
    # One fixed draw of noise levels and noise (one objective, not a new one each step): six steps
    # lower the validation loss by a third with either oneDNN ISA, in seconds.
    torch.manual_seed(0)
    module = tiny_module(learning_rate=1e-2)
    batch = toy_batch(frames=2)  # short clips: the same objective, a third of the time
    frozen_before = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("controlnet.")}
    branch_before = {k: v.clone() for k, v in module.controlnet.state_dict().items()}
    optimizer = module.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.controlnet.parameters()
    }
    start = fixed_loss(module, batch)
    module.train()
    for _ in range(6):
        optimizer.zero_grad()
        sigma, generator = torch.tensor([0.5, 2.0]), torch.Generator().manual_seed(0)
        pixels, control = batch["pixel_values"], batch["control"]
        module.compute_loss(pixels, control, sigma=sigma, generator=generator, drop_image=True).backward()
        optimizer.step()
    end = fixed_loss(module, batch)
    assert end < 0.9 * start, (start, end)
    for key, value in module.state_dict().items():
        if not key.startswith("controlnet."):
            assert torch.equal(value, frozen_before[key]), key
    changed = [k for k, v in module.controlnet.state_dict().items() if not torch.equal(v, branch_before[k])]
    assert any(k.startswith("controlnet_down_blocks") for k in changed)


def test_frozen_parts_have_no_grad_and_stay_in_eval_mode():
    module = tiny_module()
    module.train()
    for part in (module.unet, module.vae, module.image_encoder):
        assert not part.training
        assert not any(p.requires_grad for p in part.parameters())
    assert module.controlnet.training
    assert all(p.requires_grad for p in module.controlnet.parameters())


def test_validation_loss_is_deterministic():
    module = tiny_module()
    batch = toy_batch()
    torch.manual_seed(1)
    a = fixed_loss(module, batch)
    torch.manual_seed(2)  # the global RNG must not matter
    b = fixed_loss(module, batch)
    assert a == b


def test_image_drop_rate_and_effect():
    module = tiny_module()
    keep = module.image_keep_mask(200_000, torch.Generator().manual_seed(0))
    assert abs((1 - keep.mean().item()) - 0.05) < 0.003
    batch = toy_batch(n=3)
    module.hparams.objective["image_drop_prob"] = 1.0
    latents, embeds, image_latents = module.encode_conditions(batch["pixel_values"], drop_image=True)
    assert torch.count_nonzero(embeds) == 0 and torch.count_nonzero(image_latents) == 0
    assert torch.count_nonzero(latents) > 0  # the target is never dropped
    module.hparams.objective["image_drop_prob"] = 0.0
    _, embeds, image_latents = module.encode_conditions(batch["pixel_values"], drop_image=True)
    assert (embeds.flatten(1).abs().sum(1) > 0).all() and (image_latents.flatten(1).abs().sum(1) > 0).all()


def test_compact_batches_expand_to_the_contract():
    from interdyn.contract import to_contract, validate_batch

    frames = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    masks[:, :, 10:20, 10:20] = True
    batch = to_contract({"pixel_values": frames, "control": masks, "key": ["a", "b"]})
    pixels, control = validate_batch(batch)
    assert pixels.min() >= -1 and pixels.max() <= 1
    torch.testing.assert_close(pixels[0, 0, 0, 0, 0], frames[0, 0, 0, 0, 0].float() / 127.5 - 1)
    assert control.shape == (2, 3, 3, 64, 64) and control[0, 0, :, 15, 15].tolist() == [1.0, 1.0, 1.0]
    assert control[0, 0, 0, 0, 0] == -1.0
    assert to_contract(batch)["pixel_values"] is batch["pixel_values"]  # contract batches pass through


def test_added_time_ids_are_configurable():
    module = tiny_module(fps_id=5, motion_bucket_id=127, noise_aug_strength=0.1)
    torch.testing.assert_close(module.added_time_ids(2), torch.tensor([[5.0, 127.0, 0.1]] * 2))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop("control"), "missing"),
        (lambda b: b.__setitem__("pixel_values", (b["pixel_values"] + 1) * 127.5), r"outside \[-1, 1\]"),
        (lambda b: b.__setitem__("pixel_values", b["pixel_values"][:, :, :2]), "channels"),
        (lambda b: b.__setitem__("control", b["control"][:, :3]), "differ"),
        (lambda b: b.__setitem__("pixel_values", b["pixel_values"][:, 0]), r"\(B, T, C, H, W\)"),
        (lambda b: b.__setitem__("control", (b["control"] > 0).to(torch.uint8)), "dtype"),
        (lambda b: b.__setitem__("key", ["only-one"]), "key"),
    ],
)
def test_bad_batches_get_clear_errors(mutate, message):
    module = tiny_module()
    batch = toy_batch()
    mutate(batch)
    with pytest.raises(BatchContractError, match=message):
        module.training_step(batch, 0)


def test_checkpoint_hooks_keep_only_the_branch_and_restore_frozen_weights():
    module = tiny_module()
    checkpoint = {"state_dict": copy.copy(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(k.startswith("controlnet.") for k in checkpoint["state_dict"])
    other = tiny_module()
    module.on_load_checkpoint(checkpoint)
    other.load_state_dict(checkpoint["state_dict"], strict=True)
    broken = {
        "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if "controlnet_mid_block" not in k}
    }
    with pytest.raises(Exception, match="missing"):
        other.on_load_checkpoint(broken)


def test_module_loads_svd_from_a_folder(tiny_svd_folder):
    module = tiny_module(svd=str(tiny_svd_folder))
    reference = tiny_module()
    for key, value in reference.unet.state_dict().items():
        assert torch.equal(module.unet.state_dict()[key], value)


def test_missing_svd_weights_raise_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        tiny_module(svd=str(tmp_path / "no-svd-here"))


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError):
        tiny_module(frozen_dtype="int8")
    with pytest.raises(ConfigError):
        tiny_module(image_drop_prob=1.5)
    with pytest.raises(ConfigError, match="motion_loss_weight"):
        tiny_module(motion_loss_weight=-1.0)


def test_motion_loss_weight_changes_the_training_loss_only():
    # The same draws (seeded generator) with and without the motion weighting: the training loss moves,
    # the validation loss (always the plain EDM loss) does not.
    torch.manual_seed(0)
    plain, weighted = tiny_module(), tiny_module(motion_loss_weight=9.0)
    weighted.load_state_dict(plain.state_dict())
    batch = toy_batch(frames=3)
    losses = [
        m.compute_loss(
            batch["pixel_values"],
            batch["control"],
            generator=torch.Generator().manual_seed(5),
            motion_loss_weight=m.objective.motion_loss_weight,
        ).item()
        for m in (plain, weighted)
    ]
    assert abs(losses[0] - losses[1]) > 1e-3 * losses[0]
    assert fixed_loss(plain, batch) == pytest.approx(fixed_loss(weighted, batch), rel=1e-6)


def test_sample_shapes_and_seed():
    module = tiny_module(num_samples=2)
    batch = toy_batch(n=1, frames=4)
    videos = module.sample(batch["pixel_values"], batch["control"])
    assert videos.shape == (1, 2, 4, 3, 64, 64)
    assert 0 <= videos.min() and videos.max() <= 1
    assert torch.equal(videos, module.sample(batch["pixel_values"], batch["control"]))
    out = module.predict_step(batch, 0)
    assert out["videos"].shape == videos.shape and out["key"] == batch["key"]
