"""The moving average of the branch's weights (``ema_decay``): its updates, its use in evaluation, its
place in checkpoints and in what ``export`` and the readers take."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from interdyn.commands.export import export_checkpoint
from interdyn.data import MovingShapesDataModule
from interdyn.errors import ConfigError
from interdyn.models.released import load_controlnet
from interdyn.training.checkpoint import BRANCH_PREFIX, EMA_KEY, branch_from_checkpoint, read_checkpoint
from tests.helpers import short_fit_trainer, tiny_module


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class _Recorder(L.Callback):
    """The live weights after every optimizer step (with the step count Lightning reports) and the
    branch's weights while validation runs."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, list[torch.Tensor]]] = []
        self.in_validation: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step, _params(pl_module.controlnet)))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.in_validation.append(_params(pl_module.controlnet))


def _expected_average(start: list[torch.Tensor], steps, decay: float) -> list[torch.Tensor]:
    average = [t.clone() for t in start]
    for completed, live in steps:
        step = completed - 1  # the update after step k (0-based) warms up with k
        d = min(decay, (1 + step) / (10 + step))
        average = [d * a + (1 - d) * w for a, w in zip(average, live, strict=True)]
    return average


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=0, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_average_tracks_the_steps_serves_evaluation_and_checkpoints_keep_both(tmp_path) -> None:
    torch.manual_seed(0)
    module = tiny_module(ema_decay=0.5, learning_rate=1e-2)
    start = _params(module.controlnet)
    assert _close(_params(module.branch_ema), start)
    recorder = _Recorder()
    saver = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, enable_version_counter=False
    )
    trainer = short_fit_trainer(
        max_steps=3,
        val_check_interval=3,
        callbacks=[recorder, saver],
        enable_checkpointing=True,
        logger=False,
    )
    trainer.fit(module, datamodule=MovingShapesDataModule(num_train=8, num_val=2, num_frames=4, batch_size=2))

    assert len(recorder.steps) == 3
    live = recorder.steps[-1][1]
    average = _params(module.branch_ema)
    assert _close(average, _expected_average(start, recorder.steps, 0.5))
    assert not _close(average, live), "three steps at lr 1e-2 move the live weights away from their average"
    assert recorder.in_validation and _close(recorder.in_validation[0], average), (
        "validation samples the average"
    )
    assert _close(_params(module.controlnet), live), "training continues from the live weights"

    # The checkpoint was written at the end of validation, while the average was in the branch: it still
    # holds the live weights as the branch and the average beside them.
    checkpoint = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    names = [n for n, _ in module.controlnet.named_parameters()]
    saved_live = [checkpoint["state_dict"][BRANCH_PREFIX + n] for n in names]
    assert _close(saved_live, live)
    assert _close([checkpoint[EMA_KEY][n] for n in names], average)
    assert _close(_params(branch_from_checkpoint(checkpoint)), average), "readers take the average"
    assert _close(_params(branch_from_checkpoint(checkpoint, weights="live")), live)

    out = export_checkpoint(tmp_path / "ckpt" / "last.ckpt", tmp_path / "exported")
    assert _close(_params(load_controlnet(str(out))), average)

    # A resumed run restores the average, not a copy of the branch.
    resumed = tiny_module(ema_decay=0.5)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"], strict=True)
    assert _close(_params(resumed.branch_ema), average) and _close(_params(resumed.controlnet), live)

    # Starting an average from a checkpoint without one begins at its branch; a model without an average
    # says that it ignores the checkpoint's.
    plain = {k: v for k, v in checkpoint.items() if k != EMA_KEY}
    plain["state_dict"] = dict(checkpoint["state_dict"])
    fresh = tiny_module(ema_decay=0.9)
    fresh.on_load_checkpoint(plain)
    fresh.load_state_dict(plain["state_dict"], strict=True)
    assert _close(_params(fresh.branch_ema), live)
    without = tiny_module()
    own = dict(checkpoint, state_dict=dict(checkpoint["state_dict"]))
    with pytest.warns(UserWarning, match="moving average"):
        without.on_load_checkpoint(own)


def test_decay_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_module(ema_decay=1.0)
    assert tiny_module().branch_ema is None


def test_a_wan_run_averages_its_branch_and_export_and_generate_take_the_average(tmp_path) -> None:
    """The same average on the Wan backbone: the shared training hooks update it and put it in for
    validation; its checkpoint keeps both weights; the Wan readers (export, generate's loader, a branch
    started from a checkpoint) take the average unless asked for the last step's."""
    from interdyn.commands.backbone import load_wan_branch, wan_branch_from_checkpoint
    from interdyn.commands.export import export_command
    from tests.training.wan.helpers import tiny_wan_module, toy_data

    torch.manual_seed(0)
    module = tiny_wan_module(layers="first:1", ema_decay=0.5, learning_rate=1e-2)
    start = _params(module.controlnet)
    recorder = _Recorder()
    saver = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, enable_version_counter=False
    )
    trainer = short_fit_trainer(
        max_steps=3,
        val_check_interval=3,
        callbacks=[recorder, saver],
        enable_checkpointing=True,
        logger=False,
    )
    trainer.fit(module, datamodule=toy_data(num_train=6))

    live, average = recorder.steps[-1][1], _params(module.branch_ema)
    assert _close(average, _expected_average(start, recorder.steps, 0.5))
    assert not _close(average, live)
    assert recorder.in_validation and _close(recorder.in_validation[0], average), (
        "validation uses the average"
    )
    assert _close(_params(module.controlnet), live) and not module.branch_ema.training

    path = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = read_checkpoint(path)
    names = [n for n, _ in module.controlnet.named_parameters()]
    assert _close([checkpoint["state_dict"][BRANCH_PREFIX + n] for n in names], live)
    assert _close([checkpoint[EMA_KEY][n] for n in names], average)
    assert _close(_params(wan_branch_from_checkpoint(checkpoint)[0]), average)
    assert _close(_params(wan_branch_from_checkpoint(checkpoint, weights="live")[0]), live)
    assert _close(_params(load_wan_branch(str(path))[0]), average), "generate's loader takes the average"

    export_command(str(path), str(tmp_path / "ema"))
    export_command(str(path), str(tmp_path / "live"), weights="live")
    assert _close(_params(load_wan_branch(str(tmp_path / "ema"))[0]), average)
    assert _close(_params(load_wan_branch(str(tmp_path / "live"))[0]), live)

    resumed = tiny_wan_module(layers="first:1", ema_decay=0.5)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"], strict=True)
    assert _close(_params(resumed.branch_ema), average) and _close(_params(resumed.controlnet), live)
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_wan_module(ema_decay=1.0)
