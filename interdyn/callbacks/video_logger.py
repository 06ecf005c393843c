"""Sample videos during validation: control | sample | ground truth, side by side.

On the first validation batch (with clips) of each validation run the callback keeps a few clips; at the end of
validation, global rank 0 samples them with the module's sampler and writes an animated GIF to
``<log_dir>/samples/step_<global step, 7 digits>.gif`` and, with a TensorBoard logger, to the Images tab (animated).
"""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from interdyn.callbacks.clip_sampler import BatchClips, ClipCallback
from interdyn.utils.files import write_atomic
from interdyn.utils.render import to_uint8


def side_by_side(
    control: torch.Tensor, samples: torch.Tensor, truth: torch.Tensor, with_input: bool = False
) -> np.ndarray:
    """``control``/``truth`` (B, T, 3, H, W) in [-1, 1], ``samples`` (B, T, 3, H, W) or (B, N, T, 3, H, W) in
    [0, 1] -> (T, B*H, C*W, 3) uint8: one row per clip, columns [input frame |] control | samples | truth."""
    to01 = lambda x: ((x.float().cpu() + 1) / 2).clamp(0, 1)  # noqa: E731
    samples = samples.float().cpu().clamp(0, 1)
    if samples.ndim == 5:
        samples = samples[:, None]
    columns = [to01(control), *samples.unbind(1), to01(truth)]
    if with_input:
        columns.insert(0, to01(truth[:, :1]).expand_as(columns[0]))
    grid = torch.cat(columns, dim=-1)  # along width
    grid = torch.cat(list(grid), dim=-2)  # clips stacked along height: (T, 3, B*H, C*W)
    return to_uint8(grid.permute(0, 2, 3, 1)).numpy()


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Animated GIF (looping) of ``(T, H, W, 3)`` uint8 frames."""
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    return buffer.getvalue()


# Validation previews sample with 16 Euler steps: on the trained world, 16 steps scored as 32 did (SSIM,
# PSNR, FVD, physics error within the spread of the test clips; benchmarks/sampler_steps.py, the table in
# docs/benchmarks.md), at half the time of 32 and under a third of the paper's 50.
PREVIEW_STEPS = 16


class SampleVideoLogger(ClipCallback):
    """Log sampled videos of a few validation clips.

    Args:
        num_videos: clips taken from the first validation batch.
        num_inference_steps: sampling steps (default :data:`PREVIEW_STEPS`; ``None``: the module's
            ``num_inference_steps``).
        fps: playback rate of the GIF.
        every_n_validations: sample every n-th validation run.
    """

    def __init__(
        self,
        num_videos: int = 2,
        num_inference_steps: int | None = PREVIEW_STEPS,
        fps: float = 7.0,
        every_n_validations: int = 1,
    ) -> None:
        super().__init__()
        self.num_videos, self.num_inference_steps, self.fps = num_videos, num_inference_steps, fps
        self.every_n_validations = max(1, every_n_validations)
        self._validations = 0
        self._clips: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_path: Path | None = None

    def on_validation_clips(
        self, trainer: L.Trainer, pl_module: L.LightningModule, clips: BatchClips
    ) -> None:
        first = self._clips is None and clips.dataloader_idx == 0  # the first batch with clips
        if first and trainer.is_global_zero and not trainer.sanity_checking:
            n = self.num_videos
            self._clips = (clips.pixels[:n].detach(), clips.control[:n].detach())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        clips, self._clips = self._clips, None
        # trainer.log_dir broadcasts from rank 0: every rank must ask, or DDP waits forever
        log_dir = trainer.log_dir or trainer.default_root_dir
        if clips is None or not trainer.is_global_zero or (self._validations - 1) % self.every_n_validations:
            return
        pixels, control = clips
        overrides = {"num_videos_per_prompt": 1}
        if self.num_inference_steps is not None:
            overrides["num_inference_steps"] = self.num_inference_steps
        samples = pl_module.sample(pixels, control, **overrides)[:, 0]
        frames = side_by_side(control, samples, pixels)
        data = gif_bytes(frames, self.fps)
        self.last_path = write_atomic(Path(log_dir) / "samples" / f"step_{trainer.global_step:07d}.gif", data)
        self._log_tensorboard(trainer, data, frames.shape)

    @staticmethod
    def _log_tensorboard(trainer: L.Trainer, data: bytes, shape: tuple[int, ...]) -> None:
        log_gif(trainer, "samples/control|sample|truth", data, shape)


def log_gif(trainer: L.Trainer, tag: str, data: bytes, shape: tuple[int, ...]) -> None:
    """Write an animated GIF to every TensorBoard logger of ``trainer`` (Images tab); global rank 0 only,
    whose logger has the event writer (the other ranks' is a stand-in). The stock ``add_video`` silently
    writes nothing without moviepy < 2; an encoded GIF image summary always works."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not trainer.is_global_zero:
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            image = Summary.Image(height=shape[1], width=shape[2], colorspace=3, encoded_image_string=data)
            summary = Summary(value=[Summary.Value(tag=tag, image=image)])
            logger.experiment._get_file_writer().add_summary(summary, trainer.global_step)
