"""The GPU recipe's code paths, run on CPU through the real Trainer: clipping with fused Adam under mixed
precision, sampling in the run's precision, no host syncs in the training step, uint8 predictions, and
resumed runs that continue their random streams instead of replaying them."""

from __future__ import annotations

import traceback

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils._python_dispatch import TorchDispatchMode

from interdyn.data import MovingShapesDataModule, ShardDataModule
from tests.helpers import short_fit_trainer, tiny_module, toy_batch

CLIP = 1e-3  # far below the gradient norm, so every step is clipped


class StepProbe(L.Callback):
    """Records, right after each optimizer step (the closure runs inside the step), the gradient norm the
    optimizer used and whether a grad scaler asked the (fused) step to divide the gradients again;
    samples once at validation end."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.unscaled: list[bool] = []
        self.sample_dtypes: list[torch.dtype] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def after_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            grads = [
                p.grad.float() for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            self.unscaled.append(getattr(optimizer, "grad_scale", None) is None)

        trainer.optimizers[0].register_step_post_hook(after_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hook = pl_module.unet.register_forward_hook(lambda m, i, out: self.sample_dtypes.append(out[0].dtype))
        try:
            pl_module.sample(
                torch.zeros(1, 2, 3, 64, 64), -torch.ones(1, 2, 3, 64, 64), num_inference_steps=1
            )
        finally:
            hook.remove()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_clipping_with_fused_adam_under_mixed_precision(tmp_path, precision):
    """bf16 has no grad scaler: clip directly. fp16 has one: unscale first, then clip, and the fused step
    must not divide again."""
    probe = StepProbe()
    # Lightning turns 16-mixed into bf16-mixed on CPU unless the plugin is given.
    mixed = (
        {"plugins": [MixedPrecision("16-mixed", "cpu")]}
        if precision == "16-mixed"
        else {"precision": precision}
    )
    trainer = short_fit_trainer(
        gradient_clip_val=CLIP, callbacks=[probe], logger=False, default_root_dir=tmp_path, **mixed
    )
    module = tiny_module(fused_optimizer=True, learning_rate=1e-3)
    before = {k: v.clone() for k, v in module.controlnet.state_dict().items()}
    # three frames: native bf16 gives NaN temporal-conv weight gradients for two (see test_recipes.py)
    data = MovingShapesDataModule(num_train=4, num_val=1, num_frames=3, batch_size=2)
    trainer.fit(module, datamodule=data)

    assert trainer.global_step == 2 and len(probe.norms) == 2
    assert all(probe.unscaled)
    finite = [n for n in probe.norms if torch.isfinite(torch.tensor(n))]
    assert finite and all(n == pytest.approx(CLIP, rel=1e-3) for n in finite), probe.norms
    assert any(not torch.equal(v, before[k]) for k, v in module.controlnet.state_dict().items())
    # sampling from a callback runs in the precision the run trains in
    expected = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert probe.sample_dtypes and set(probe.sample_dtypes) == {expected}


class HostSyncs(TorchDispatchMode):
    """Collects the ops that copy a value to the host (``.item()``, ``bool(t)``) or a Python value to the
    device (``torch.tensor(list, device=...)``), with the functions on the stack: on an accelerator each
    one stalls the step."""

    OPS = ("aten::_local_scalar_dense", "aten::lift_fresh", "aten::lift_fresh_copy")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func._schema.name in self.OPS:
            self.seen.append((func._schema.name, [f.name for f in traceback.extract_stack()]))
        return func(*args, **(kwargs or {}))


# diffusers' antialiased resize (SVD's CLIP preprocessing, used on the encoder path) builds its blur kernel
# from Python numbers on the host; the cached-conditioning path has no CLIP step at all.
KNOWN = "_gaussian_blur2d"


def test_training_step_has_no_host_syncs():
    module = tiny_module()
    batch = toy_batch(frames=2)
    b, t = batch["control"].shape[:2]
    cached = {
        "control": batch["control"],
        "latent_mean": torch.randn(b, t, 4, 8, 8),
        "latent_std": torch.rand(b, t, 4, 8, 8),
        "image_latents": torch.randn(b, 4, 8, 8),
        "image_embeds": torch.randn(b, 1, 32),
    }
    for sample in (batch, cached):
        module.training_step(sample, 0)  # the first step checks the values once
        with HostSyncs() as syncs:
            loss = module.training_step(sample, 1)
        found = [(op, stack[-8:]) for op, stack in syncs.seen if KNOWN not in stack]
        assert torch.isfinite(loss) and found == [], found


def test_predict_returns_uint8_videos():
    out = tiny_module(num_inference_steps=1).predict_step(toy_batch(n=1, frames=2), 0)
    assert out["videos"].dtype == torch.uint8 and out["videos"].shape == (1, 1, 2, 3, 64, 64)


class StreamProbe(L.Callback):
    """What each training step drew: the clips (key, window start) and the module's RNG state."""

    def __init__(self) -> None:
        self.draws: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        clips = tuple(zip(batch["key"], batch["start_frame"], strict=True))
        self.draws.append((clips, torch.rand(1).item()))


def test_resumed_runs_continue_their_random_streams(tmp_path, synthetic_shards):
    def run(max_steps: int, ckpt: str | None) -> StreamProbe:
        L.seed_everything(0)  # as the CLI does on every start
        probe = StreamProbe()
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            limit_val_batches=0,
            callbacks=[probe, L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        data = ShardDataModule(
            train_shards=str(synthetic_shards / "train/*.tar"),
            clip={"num_frames": 2, "height": 64, "width": 64, "crop": "random"},
            batch_size=2,
            num_workers=0,
            shuffle_buffer=8,
            epoch_samples=8,
        )
        trainer.fit(tiny_module(), datamodule=data, ckpt_path=ckpt)
        return probe

    first = run(2, None)
    resumed = run(4, str(tmp_path / "last.ckpt"))
    assert len(first.draws) == len(resumed.draws) == 2
    assert [d[0] for d in resumed.draws] != [d[0] for d in first.draws]  # other clips and windows
    assert [d[1] for d in resumed.draws] != [d[1] for d in first.draws]  # other noise


class _Threads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        from interdyn.data.video import decoder_threads

        return decoder_threads()


def test_decoder_threads_are_shared_by_workers_and_local_ranks(monkeypatch):
    import os

    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0))
    loader = torch.utils.data.DataLoader(_Threads(), batch_size=None, num_workers=2)
    assert list(loader) == [max(1, cores // 2)] * 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert list(loader) == [max(1, cores // 4)] * 2
    assert _Threads()[0] == max(1, cores // 2)  # the main process: no workers, 2 local ranks
