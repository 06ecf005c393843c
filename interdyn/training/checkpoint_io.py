"""Lightning's checkpoint IO made weights-only: :class:`WeightsOnlyCheckpointIO` takes the place of the
strategy's loader, so that resuming, ``test`` and ``validate`` read checkpoints through
:func:`~interdyn.training.checkpoint.load_checkpoint` only.

Lightning's own loader defaults to ``weights_only=False`` for URLs and lets the caller turn the
restriction off; this one ignores that switch. Tensors go to the CPU; Lightning then copies them to each
rank's own device, so no rank ever allocates on the device the checkpoint was saved from (``cuda:0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from interdyn.errors import ConfigError
from interdyn.training.checkpoint import load_checkpoint


class WeightsOnlyCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO with loading replaced by :func:`load_checkpoint`.

    Saving and removing go to ``inner`` (Lightning's default, or whatever the strategy had, such as an
    asynchronous writer). ``load_checkpoint``'s ``weights_only`` and ``map_location`` arguments are
    ignored on purpose: loading is always weights-only, onto the CPU. With the ``trainer`` it serves, a load
    outside ``fit`` (``test``, ``validate``, ``predict``) keeps only what those restore: the optimizer and
    scheduler states are dropped unread (memory-mapped, they never reach memory); a load for ``fit`` needs
    them.
    """

    def __init__(self, inner: CheckpointIO | None = None, trainer: Any | None = None) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self.trainer = trainer

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        checkpoint = load_checkpoint(path)
        if self.trainer is None:
            return checkpoint
        from lightning.pytorch.trainer.states import TrainerFn

        if self.trainer.state.fn != TrainerFn.FITTING:
            for key in ("optimizer_states", "lr_schedulers"):
                checkpoint.pop(key, None)
        elif "optimizer_states" not in checkpoint:
            raise ConfigError(
                f"{path} holds weights only (no optimizer state), so `fit` cannot resume from it; pass "
                "a last.ckpt or step checkpoint written by `interdyn fit`, or test it with `interdyn test`"
            )
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def secure_strategy(strategy: Any, trainer: Any | None = None) -> None:
    """Make ``strategy`` (``trainer``'s) load checkpoints only through :func:`load_checkpoint`."""
    current = strategy.checkpoint_io
    if not isinstance(current, WeightsOnlyCheckpointIO):
        strategy.checkpoint_io = WeightsOnlyCheckpointIO(current, trainer)
    elif trainer is not None:
        current.trainer = trainer
