"""Training recipe switches: each keeps the training step close to the plain one on the tiny model,
and no setup gives the frozen parts gradients or optimizer state.

Tolerances: gradient checkpointing and fused Adam are exact up to float32 reordering (1e-5 relative).
bf16 storage of the frozen parts and bf16 autocast are checked for what bf16 guarantees on every CPU,
with or without native bf16 instructions: dtypes, no gradients or optimizer state for the frozen
parts, finite gradients, and a loss within 1 %. The direction of the branch gradient is compared in a
well-conditioned setting only (128x128 frames): at 64x64 the deepest levels of the tiny model run
GroupNorm over 1x1 feature maps with two channels per group, where bf16 rounding is amplified, and
the cosine to the fp32 gradient depends on the CPU's bf16 kernels (0.56 to 0.99 for the same code),
which says nothing about the full model.
"""

from __future__ import annotations

import pytest
import torch

from interdyn.data import MovingShapesDataset
from interdyn.errors import ConfigError
from tests.helpers import randomize_, tiny_module, toy_batch


def loss_and_grads(module, batch, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss with fixed sigma and noise, and the branch gradient flattened."""
    module.train()
    module.controlnet.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.7, 3.0])
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss = module.compute_loss(batch["pixel_values"], batch["control"], sigma=sigma, generator=generator)
    loss.backward()
    grads = torch.cat(
        [p.grad.flatten().float() for p in module.controlnet.parameters() if p.grad is not None]
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


BF16_SETUPS = {  # setup -> (frozen_dtype, autocast dtype)
    "frozen_bf16": ("bfloat16", None),
    "autocast_bf16": ("float32", torch.bfloat16),
    "both": ("bfloat16", torch.bfloat16),
}


@pytest.mark.parametrize("setup", list(BF16_SETUPS))
def test_bf16_keeps_dtypes_loss_and_frozen_parts(reference, setup):
    batch, loss, _ = reference
    frozen_dtype, autocast = BF16_SETUPS[setup]
    module = make(frozen_dtype=frozen_dtype)
    optimizer = module.configure_optimizers()
    got_loss, got_grads = loss_and_grads(module, batch, autocast=autocast)
    assert torch.isfinite(got_loss) and abs(got_loss.item() - loss.item()) <= 0.01 * loss.item()
    assert torch.isfinite(got_grads).all()
    assert all(p.grad is not None for p in module.controlnet.parameters()), "every branch weight learns"
    optimizer.step()
    assert set(map(id, optimizer.state)) == {id(p) for p in module.controlnet.parameters()}
    assert_frozen_untouched(module)
    expected = getattr(torch, frozen_dtype)
    for part in (module.unet, module.image_encoder):  # the VAE is kept in fp32 when it would overflow
        assert all(p.dtype == expected for p in part.parameters())
    assert all(p.dtype == torch.float32 for p in module.controlnet.parameters()), "the branch trains in fp32"


def test_bf16_keeps_the_gradient_direction():
    """At 128x128 (2x2 maps at the deepest level) every bf16 setup keeps the whole branch gradient's
    direction (cosine 0.9998 both with native bf16 and with oneDNN capped at AVX2). Three frames, not two:
    with native bf16 (avx512_bf16), oneDNN's bf16 weight gradient of a (3,1,1) temporal Conv3d over exactly
    two frames is NaN (torch 2.14.1; one, three or more frames are fine, and so are 14-frame clips)."""
    data = MovingShapesDataset(2, num_frames=3, height=128, width=128, seed=3)
    batch = {k: torch.stack([data[i][k] for i in range(2)]) for k in ("pixel_values", "control")}
    _, grads = loss_and_grads(make(), batch)
    for setup, (frozen_dtype, autocast) in BF16_SETUPS.items():
        _, got = loss_and_grads(make(frozen_dtype=frozen_dtype), batch, autocast=autocast)
        cosine = torch.nn.functional.cosine_similarity(got, grads, dim=0)
        assert cosine > 0.99, (setup, cosine)


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
