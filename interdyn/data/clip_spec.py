"""The clip's geometry and timing: one contract for every place that cuts clips.

The shard reader (:class:`interdyn.data.shards.ClipDecoder`), :class:`~interdyn.data.datamodule.ShardDataModule`
(``data: init_args: clip: {...}`` in a config), the latent cache (:mod:`data_prep.latents`), ``interdyn
evaluate``, ``interdyn generate`` (through :mod:`interdyn.inputs`) and the app take one :class:`ClipSpec`
whole, by default :data:`PAPER_CLIP`, so that a clip means the same thing everywhere and a new setting is
added here only. Commands keep flat flags (``--num_frames``, ``--height``) mapped onto a spec by
:func:`interdyn.commands.parsers.add_settings_options`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

Crop = Literal["center", "random", "mask_aware"]
Window = Literal["center", "start"]
FrameSampling = Literal["uniform", "timestamp"]
WINDOWS: tuple[str, ...] = get_args(Window)

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

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (also the flat options of the commands that cut clips)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: ClipSpec | Mapping[str, Any] | None) -> ClipSpec:
        """``values`` as a spec: a spec as it is, a mapping (a config's ``clip:`` section, a saved
        hyper-parameter) over :data:`PAPER_CLIP` (missing keys keep the paper's values; unknown keys are an
        error)."""
        if isinstance(values, ClipSpec):
            return values
        unknown = sorted(set(values or {}) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown clip settings {unknown}; the clip settings are {list(cls.names())}")
        return replace(PAPER_CLIP, **dict(values or {}))

    def with_overrides(self, **overrides: Any) -> ClipSpec:
        """A copy with the given fields replaced (``None`` values leave a field as it is)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_kwargs(self) -> dict[str, Any]:
        """Every setting by name, as plain values (a config's ``clip:`` section)."""
        return asdict(self)

    def geometry(self) -> dict[str, Any]:
        """The settings of :data:`GEOMETRY_KEYS`, as a latent cache records them."""
        return {key: getattr(self, key) for key in GEOMETRY_KEYS}


PAPER_CLIP = ClipSpec()


@dataclass(frozen=True)
class ClipRules:
    """What a backbone needs of its clips: ``1 + frame_step * k`` frames (a causal video VAE that encodes the
    first frame alone, then ``frame_step`` frames per latent frame; 1 for any length) and a height and width
    that are multiples of ``spatial_multiple`` (the VAE's compression times the denoiser's patch)."""

    backbone: str
    frame_step: int = 1
    spatial_multiple: int = 8

    def check(self, num_frames: int, height: int, width: int, where: str = "the clip") -> None:
        """Raise ``ValueError`` (one sentence) for a clip shape the backbone cannot take."""
        step, multiple = self.frame_step, self.spatial_multiple
        if num_frames < 1 + (step > 1) or (num_frames - 1) % step:
            k = max(1, (num_frames - 1) // step)
            raise ValueError(
                f"{where} has {num_frames} frames, but {self.backbone} needs 1 + {step}k frames (its VAE "
                f"encodes the first frame alone, then {step} frames per latent frame): use e.g. "
                f"{1 + step * k} or {1 + step * (k + 1)}"
            )
        if height % multiple or width % multiple:
            raise ValueError(
                f"{where} is {height}x{width} pixels, but {self.backbone} needs a height and width that are "
                f"multiples of {multiple}: use e.g. {_nearest(height, multiple)}x{_nearest(width, multiple)}"
            )


def _nearest(size: int, multiple: int) -> int:
    return max(multiple, round(size / multiple) * multiple)


# The clip proposed for Wan2.2 TI2V-5B on SSV2 (configs/wan_ssv2.yaml): 49 frames (13 latent frames) at SSV2's
# own 12 fps, about 4 s, every source frame; 256x384 as the paper's SVD clips (SSV2 is 240 pixels high), a
# multiple of Wan's 32 (x16 VAE, 2x2 patch).
WAN_SSV2_CLIP = replace(PAPER_CLIP, num_frames=49, fps=12.0)
