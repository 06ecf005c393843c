"""The clip's geometry and timing: one contract for every place that cuts clips.

The shard reader (:class:`interdyn.data.shards.ClipDecoder`), :class:`~interdyn.data.datamodule.ShardDataModule`,
the latent cache (:mod:`data_prep.latents`), ``interdyn evaluate`` and ``interdyn generate`` (through
:mod:`interdyn.inputs`) take their defaults from :data:`PAPER_CLIP`, so that a clip means the same thing
everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Crop = Literal["center", "random", "mask_aware"]
Window = Literal["center", "start"]
FrameSampling = Literal["uniform", "timestamp"]

# The settings that fix what a clip holds (which frames, what size): a cache built with other values
# cannot serve a DataModule (see :mod:`interdyn.data.cache`).
GEOMETRY_KEYS = ("num_frames", "fps", "frame_stride", "frame_sampling", "height", "width")


@dataclass(frozen=True)
class ClipSpec:
    """Which source frames a clip takes and how they are brought to the model's size.

    The defaults are the paper's settings: InterDyn trains SVD on clips of 14 frames at "7 FPS" (SVD's
    fps=7 convention: every 2nd frame of SSV2's 12 fps videos, see :mod:`interdyn.data.sampling`) of
    256x384 pixels, cropped around the driver masks.

    Args:
        num_frames: frames per clip.
        fps: target frame rate (``None``: ``frame_stride`` decides alone).
        frame_stride: take every ``frame_stride``-th source frame whatever the source rate.
        frame_sampling: ``uniform`` (the integer stride nearest ``fps``) or ``timestamp`` (the frame nearest
            each ``k / fps`` s).
        height, width: output size.
        crop: crop window after the resize: ``mask_aware`` (centred on the driver masks), ``center`` or
            ``random`` (see :mod:`interdyn.data.transforms`).
        window: where a fixed clip starts in a longer video: ``center`` (the middle valid start) or
            ``start``; training draws its windows at random instead.
    """

    num_frames: int = 14
    fps: float | None = 7.0
    frame_stride: int | None = None
    frame_sampling: FrameSampling = "uniform"
    height: int = 256
    width: int = 384
    crop: Crop = "mask_aware"
    window: Window = "center"

    def as_kwargs(self) -> dict[str, Any]:
        """Every setting by name (the keyword arguments of :class:`~interdyn.data.shards.ClipDecoder`)."""
        return asdict(self)

    def geometry(self) -> dict[str, Any]:
        """The settings of :data:`GEOMETRY_KEYS`, as a latent cache records them."""
        return {key: getattr(self, key) for key in GEOMETRY_KEYS}


PAPER_CLIP = ClipSpec()
