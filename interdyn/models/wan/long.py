"""Videos longer than one window on Wan2.2 TI2V: overlapping windows sampled one after another.

The windows are planned as SVD's (:func:`~interdyn.models.long.plan_windows`): ``window`` frames each,
consecutive ones sharing ``overlap`` frames, the last moved back so that it is full. On Wan every one of the
three counts is ``1 + 4k`` frames (the causal VAE's packing), so each window's frames known from earlier
windows are also ``1 + 4m`` frames: whole latent frames. Each window after the first starts from the
previous frames at its start (decoded), which become its TI2V image. Two ways to continue:

- ``chain``: the image alone (the overlapping frames after it are sampled afresh and dropped);
- ``hold``: all the known frames, encoded again by the VAE, are held clean with timestep 0 while the
  window is sampled, as TI2V holds its image's latent frame (the pipeline's ``known_latents``), so that
  the new frames continue the motion under way. Training-free: the branch and the base were trained with
  the image's latent frame alone held.

The video is the first window followed by each later window minus its known frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interdyn.models.long import Window, plan_windows
from interdyn.models.wan.controlnet import check_clip_frames
from interdyn.models.wan.ti2v import encode_video_latents

WAN_CONTINUATIONS = ("chain", "hold")  # context branches are SVD's


def plan_wan_windows(num_frames: int, window: int, overlap: int) -> list[Window]:
    """The windows of a Wan video of ``num_frames`` frames (:func:`~interdyn.models.long.plan_windows`); one
    sentence (``ValueError``) for a count that is not ``1 + 4k`` frames or an overlap the window cannot take."""
    for name, value in (("the video", num_frames), ("the window", window), ("the overlap", overlap)):
        try:
            check_clip_frames(value)
        except ValueError:
            raise ValueError(
                f"{name} has {value} frames, but on Wan the video, its windows and their overlap are each "
                "1 + 4k frames (e.g. 49-frame windows overlapping by 5 or 9)"
            ) from None
    return plan_windows(num_frames, window, overlap)


@dataclass
class WanLongVideo:
    """What long sampling made: the video ``(B, T, 3, H, W)`` in ``[0, 1]`` and the windows it was made in."""

    frames: torch.Tensor
    plan: list[Window]


@torch.no_grad()
def sample_wan_windows(
    pipe: Any,
    image: torch.Tensor,
    prompt_embeds: torch.Tensor,
    control: torch.Tensor,
    window: int,
    overlap: int,
    continuation: str = "hold",
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> WanLongVideo:
    """Sample a video as long as ``control`` ``(B, T, 3, H, W)`` (in ``[-1, 1]``) in windows of ``window``
    frames with :class:`~interdyn.models.wan.pipeline.InterDynWanPipeline` ``pipe``, from the first frames
    ``image`` ``(B, 3, H, W)`` in ``[-1, 1]``. ``generator`` draws every window's noise in turn; ``kwargs`` go to
    every pipeline call (steps, scales, the negative prompt embedding). A video of at most one window is one
    pass."""
    if continuation not in WAN_CONTINUATIONS:
        raise ValueError(f"continuation on Wan must be one of {WAN_CONTINUATIONS}, got {continuation!r}")
    plan = plan_wan_windows(control.shape[1], window, overlap)
    video: torch.Tensor | None = None  # the frames made so far, in [0, 1]
    for w in plan:
        first = image if video is None else video[:, w.start] * 2 - 1
        known = None
        if video is not None and continuation == "hold":
            pixels = video[:, w.start : w.start + w.known] * 2 - 1
            known = encode_video_latents(pipe.vae, pixels.to(pipe.vae.device))
        frames = pipe(
            first, prompt_embeds, control=control[:, w.start : w.stop], generator=generator,
            known_latents=known, output_type="pt", **kwargs,
        ).frames.float()  # fmt: skip
        video = frames if video is None else torch.cat([video, frames[:, w.known :].to(video)], dim=1)
    assert video is not None
    return WanLongVideo(video, plan)
