"""The sampling settings of InterDyn, defined once: the module's sampling, the pipeline's defaults and
``interdyn generate`` all take them from :class:`SamplingSettings`.

The defaults are the paper's (section 4): SVD's Euler sampler with 50 steps, classifier-free guidance
rising linearly from 1.0 on the first frame to 3.0 on the last, and SVD's added time ids as InterDyn
sets them: fps id 6 (SVD's fps=7 convention, which conditions on fps - 1), motion bucket 40 (stock SVD
uses 127) and noise augmentation 0.02.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

Scheduler = Literal["euler", "dpmpp_2m", "edm_euler"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
# How a driver longer than the model's window is sampled (interdyn.models.long, docs/long.md).
Continuation = Literal["single", "chain", "hold", "context"]
CONTINUATIONS: tuple[str, ...] = get_args(Continuation)
DEFAULT_OVERLAP = 4


@dataclass(frozen=True)
class SamplingSettings:
    """How videos are sampled; the field names are the pipeline's keyword arguments.

    Args:
        num_inference_steps: sampler steps (each one model evaluation, batched over guidance).
        min_guidance_scale: classifier-free guidance of the first frame.
        max_guidance_scale: guidance of the last frame (linear in between; none when at most 1).
        fps_id: SVD's fps conditioning (fps - 1: 6 for the paper's "7 FPS").
        motion_bucket_id: SVD's motion bucket.
        noise_aug_strength: noise added to the conditioning image latent (also SVD's third time id).
        conditioning_scale: multiplies the branch residuals (0 gives plain SVD).
        scheduler: ``euler`` (SVD's, the paper's), ``dpmpp_2m`` (DPM-Solver++(2M); on the trained
            world it needs more steps than Euler, not fewer: see docs/benchmarks.md) or ``edm_euler``.
        window_overlap: frames shared by consecutive windows when a driver is longer than the model's
            window (at least 1, less than the window; see docs/long.md).
        continuation: how a driver longer than the model's window is sampled: ``hold`` (windows; the
            overlapping frames held to those already made), ``chain`` (windows, nothing held) or
            ``single`` (one pass over all frames), or ``context`` (held as ``hold``, and a context branch
            also gets the known frames as input); a driver of at most one window is always one pass.
    """

    num_inference_steps: int = 50
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    fps_id: float = 6
    motion_bucket_id: float = 40
    noise_aug_strength: float = 0.02
    conditioning_scale: float = 1.0
    scheduler: str = "euler"
    window_overlap: int = DEFAULT_OVERLAP
    continuation: str = "hold"

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.continuation not in CONTINUATIONS:
            raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {self.continuation!r}")
        overlap = self.window_overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
            raise ValueError(f"window_overlap must be a whole number of frames, at least 1, got {overlap!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (also the module's hyper-parameters that hold them)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplingSettings:
        """The settings found in ``values`` (e.g. a module's hyper-parameters); other keys are ignored and
        missing ones keep their defaults."""
        return cls(**{name: values[name] for name in cls.names() if name in values})

    def with_overrides(self, **overrides: Any) -> SamplingSettings:
        """A copy with the given fields replaced (``None`` values leave a field as it is)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of :class:`~interdyn.models.pipeline.InterDynPipeline`."""
        return asdict(self)


DEFAULT_SAMPLING = SamplingSettings()
