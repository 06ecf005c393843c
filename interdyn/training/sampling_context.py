"""The context both training modules sample in: the branch in eval mode, the trainer's precision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import lightning as L


@contextmanager
def sampling_context(module: L.LightningModule) -> Iterator[None]:
    """Run sampling with ``module.controlnet`` in eval mode and, when the module is attached to a trainer,
    in the trainer's precision (e.g. bf16 autocast; Lightning runs callbacks outside its autocast, and they
    sample too). The branch's train/eval mode is restored afterwards, also on an error."""
    was_training = module.controlnet.training
    module.controlnet.eval()
    trainer = module._trainer
    precision = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
    try:
        with precision:
            yield
    finally:
        module.controlnet.train(was_training)
