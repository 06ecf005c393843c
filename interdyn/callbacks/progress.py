"""Lightning's progress bars, counting a resumed run from where it stopped.

With ``max_steps`` and no epoch limit, Lightning sizes the training bar by the steps still to run
(``max_steps - global_step``) while it counts batches from the start of the epoch. A run resumed
mid-epoch (always, with the shard streams: their single epoch never ends) then shows totals such as
``2000/799``. :func:`resume_aware` makes the total the batches of the whole epoch that this run will
have reached: those already done before the checkpoint plus those still to run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks.progress import ProgressBar

_CLASSES: dict[type, type] = {}


class _ResumeAwareTotal:
    """Mixin for a :class:`ProgressBar` subclass: the corrected ``total_train_batches``."""

    trainer: Any

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        batches = trainer.num_training_batches
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            # Batches of this epoch started so far (those before a resume included), plus those still to
            # run; the same sum when the bar asks at an epoch's start or, resumed mid-epoch, after the
            # first batch (started and stepped, not yet counted completed).
            started = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            remaining = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            return min(batches, started + remaining)
        return batches


def resume_aware(bar: ProgressBar) -> ProgressBar:
    """Give ``bar`` (Lightning's rich or tqdm bar, as configured) the corrected training total, in place."""
    cls = type(bar)
    if issubclass(cls, _ResumeAwareTotal):
        return bar
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"ResumeAware{cls.__name__}", (_ResumeAwareTotal, cls), {})
    bar.__class__ = _CLASSES[cls]
    return bar
