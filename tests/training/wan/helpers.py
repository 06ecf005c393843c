"""The tiny Wan module and its data, shared by the Wan training tests."""

from __future__ import annotations

from typing import Any

import lightning as L

from interdyn.data import MovingShapesDataModule
from interdyn.training.wan_module import InterDynWanModule
from tests.models.wan.helpers import TINY_MASK_CHANNELS

# Wan's smallest clip: two latent frames (1 + 4 frames) of one token (32 x 32 pixels: x16 VAE, 2x2 patch).
FRAMES, SIZE = 5, 32


def tiny_wan_module(**kw: Any) -> InterDynWanModule:
    """InterDynWanModule on the tiny random Wan2.2 TI2V, sampling with 2 steps."""
    kw.setdefault("wan", "random:wan-tiny")
    kw.setdefault("conditioning_embedding_out_channels", TINY_MASK_CHANNELS)
    kw.setdefault("sampling", {"num_inference_steps": 2})
    kw.setdefault("learning_rate", 1e-3)
    return InterDynWanModule(**kw)


def toy_data(**kw: Any) -> MovingShapesDataModule:
    """Toy clips of Wan's shape: 4 training clips, 2 to validate and 1 to test, batches of 2."""
    args = {"num_train": 4, "num_val": 2, "num_test": 1, "num_frames": FRAMES, "height": SIZE, "width": SIZE}
    return MovingShapesDataModule(**{**args, **kw})


def quiet_trainer(**kw: Any) -> L.Trainer:
    """A quiet CPU trainer: two training steps, no validation, no checkpoints unless asked."""
    base = {"max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False}
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(accelerator="cpu", **{**base, **quiet, **kw})
