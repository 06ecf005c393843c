"""Training recipe switches (issue 6): each keeps the training step close to the plain one on the tiny
model, and no setup gives the frozen parts gradients or optimizer state.

Tolerances: gradient checkpointing and fused Adam are exact up to float32 reordering (1e-5 relative).
bf16 storage of the frozen parts and bf16 autocast change the loss by less than 1 % and keep the
direction of the gradient of the branch's full-resolution levels (input conv, control encoder, first
residual convs: cosine > 0.98). The deepest levels' gradients are not compared: in this tiny random
model they pass through GroupNorm over 1x1 feature maps of the frozen decoder, where rounding is
amplified (their cosine is 0.1-0.4 even with fp16 storage), which says nothing about the full model.
"""

from __future__ import annotations

import pytest
import torch

from interdyn.errors import ConfigError
from tests.conftest import randomize_
from tests.test_module import tiny_module, toy_batch

FULL_RESOLUTION = (
    "conv_in",
    "controlnet_cond_embedding",
    *(f"controlnet_down_blocks.{i}." for i in range(4)),
)


def loss_and_grads(
    module, batch, autocast: torch.dtype | None = None, only: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss with fixed sigma and noise, and the branch gradient flattened (``only``: name prefixes)."""
    module.train()
    module.controlnet.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.7, 3.0])
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss = module.compute_loss(batch["pixel_values"], batch["control"], sigma=sigma, generator=generator)
    loss.backward()
    grads = torch.cat(
        [
            p.grad.flatten().float()
            for n, p in module.controlnet.named_parameters()
            if p.grad is not None and (only is None or n.startswith(only))
        ]
    )
    return loss.detach(), grads


def make(**kw):
    module = tiny_module(**kw)
    randomize_(module.controlnet, seed=5)  # non-zero residuals, so the UNet's backward matters
    return module


def assert_frozen_untouched(module) -> None:
    for part in (module.unet, module.vae, module.image_encoder):
        assert all(p.grad is None and not p.requires_grad for p in part.parameters())


@pytest.fixture(scope="module")
def reference():
    batch = toy_batch(n=2, frames=4)
    loss, grads = loss_and_grads(make(), batch)
    return batch, loss, grads


@pytest.mark.parametrize(
    "switches",
    [
        {"gradient_checkpointing": True},
        {"unet_gradient_checkpointing": True},
        {"gradient_checkpointing": True, "unet_gradient_checkpointing": True},
    ],
)
def test_gradient_checkpointing_gives_the_same_step(reference, switches):
    batch, loss, grads = reference
    module = make(**switches)
    assert module.controlnet.is_gradient_checkpointing == switches.get("gradient_checkpointing", False)
    assert module.unet.is_gradient_checkpointing == switches.get("unet_gradient_checkpointing", False)
    got_loss, got_grads = loss_and_grads(module, batch)
    torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grads, grads, rtol=1e-4, atol=1e-6)
    assert_frozen_untouched(module)


@pytest.mark.parametrize("setup", ["frozen_bf16", "autocast_bf16", "both"])
def test_bf16_stays_close(reference, setup):
    batch, loss, _ = reference
    _, grads = loss_and_grads(make(), batch, only=FULL_RESOLUTION)
    module = make(frozen_dtype="bfloat16" if setup != "autocast_bf16" else "float32")
    autocast = torch.bfloat16 if setup != "frozen_bf16" else None
    got_loss, got_grads = loss_and_grads(module, batch, autocast=autocast, only=FULL_RESOLUTION)
    assert abs(got_loss.item() - loss.item()) <= 0.01 * loss.item()
    cosine = torch.nn.functional.cosine_similarity(got_grads, grads, dim=0)
    assert cosine > 0.98, cosine
    assert_frozen_untouched(module)
    assert all(p.dtype == torch.float32 for p in module.controlnet.parameters()), "the branch trains in fp32"


@pytest.mark.parametrize("optimizer, fused", [("adam", True), ("adamw", False), ("adamw", True)])
def test_optimizers_hold_only_the_branch_and_match_plain_adam(reference, optimizer, fused):
    batch, _, _ = reference
    plain, other = make(), make(optimizer=optimizer, fused_optimizer=fused)
    opt_plain, opt_other = plain.configure_optimizers(), other.configure_optimizers()
    assert isinstance(opt_other, torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)
    assert opt_other.defaults.get("fused") == (True if fused else None)
    branch = {id(p) for p in other.controlnet.parameters()}
    assert {id(p) for g in opt_other.param_groups for p in g["params"]} == branch
    for module, opt in ((plain, opt_plain), (other, opt_other)):
        loss_and_grads(module, batch)
        opt.step()
    # no frozen parameter got optimizer state
    assert set(map(id, opt_other.state)) <= branch
    for (name, a), b in zip(plain.controlnet.named_parameters(), other.controlnet.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)  # weight_decay 0: Adam == AdamW


def test_8bit_adam_without_bitsandbytes_is_a_clear_error():
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        module = make(optimizer="adamw8bit")
        with pytest.raises(ConfigError, match="pip install bitsandbytes"):
            module.configure_optimizers()
    else:  # pragma: no cover - only where bitsandbytes is installed
        optimizer = make(optimizer="adamw8bit").configure_optimizers()
        assert type(optimizer).__name__ == "AdamW8bit"


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        tiny_module(optimizer="sgd")


@pytest.mark.slow
def test_compile_gives_the_same_step(reference):
    """torch.compile of the branch and UNet: graph capture and the training step through it. The
    aot_eager backend skips code generation (inductor takes over ten minutes on 2 CPU cores)."""
    batch, loss, grads = reference
    module = make(compile={"backend": "aot_eager"})
    module.configure_model()
    got_loss, got_grads = loss_and_grads(module, batch)
    torch.testing.assert_close(got_loss, loss, rtol=1e-4, atol=1e-5)
    # decomposed group norms round differently: a few deep-level elements move by ~3e-5
    torch.testing.assert_close(got_grads, grads, rtol=1e-3, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(got_grads, grads, dim=0) > 0.9999
    assert set(module.state_dict()) == set(make().state_dict()), "compiling must not rename the weights"


def test_bf16_frozen_parts_do_not_round_the_new_branch():
    half = tiny_module(frozen_dtype="bfloat16")
    reference = tiny_module()
    assert all(p.dtype == torch.bfloat16 for p in half.unet.parameters())
    assert all(p.dtype == torch.bfloat16 for p in half.image_encoder.parameters())
    copied = [n for n in reference.controlnet.state_dict() if not n.startswith("controlnet_cond_embedding")]
    for name in copied:  # the encoder copy of the UNet (the control encoder is drawn at random)
        assert torch.equal(half.controlnet.state_dict()[name], reference.controlnet.state_dict()[name]), name
