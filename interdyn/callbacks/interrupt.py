"""Ctrl-C during ``fit`` keeps the interrupted step: :class:`LastCheckpointOnInterrupt`."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import Callback


class LastCheckpointOnInterrupt(Callback):
    """On Ctrl-C during ``fit``, write the ``last`` checkpoint of every ``ModelCheckpoint(save_last=...)``
    so that ``--ckpt_path <its folder>/last.ckpt`` resumes from the interrupted step.

    Single-process runs only: in a multi-process run the save needs every rank at a barrier, which an
    interrupt may not reach; there the periodic checkpoints (``every_n_train_steps``) are what is kept.
    """

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.trainer.states import TrainerFn
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.world_size > 1 or trainer.global_step == 0:
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
                trainer.save_checkpoint(path)
                rank_zero_info(
                    f"interrupted at step {trainer.global_step}: saved {path} (resume: --ckpt_path {path})"
                )
