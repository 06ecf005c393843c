"""Videos longer than the model's window: overlapping windows sampled one after another.

A driver of ``T`` frames, longer than the UNet's window ``W`` (its ``num_frames``: 14 for SVD), is cut into
windows of ``W`` frames that overlap by ``O`` frames (:func:`plan_windows`); the last window is moved back
so that it is full and then overlaps its predecessor by more. Each window after the first takes the
previous window's frame at its start as its SVD conditioning image (the decoded frame). Three ways to
continue (``continuation``):

- ``chain``: nothing more (naive chaining; the overlapping frames are sampled afresh);
- ``hold``: the overlapping frames are also held to the latents already generated while the window is
  sampled (:class:`LatentHold`): after every sampler step, the known latents noised to the sampler's
  current sigma (with the window's own starting noise) replace those frames, and at the end they are
  the known latents, so that motion under way carries into the new window (training-free);
- ``context``: held as ``hold``, and a context branch (``ControlNetSDVModel.from_branch``) also gets the
  first known frames, up to its ``context_frames``, as input (:func:`~interdyn.models.controlnet.context_input`):
  the input it was trained with, whose noisy known frames are the clean ones noised to the step's sigma,
  which holding keeps them at.

``single`` is the baseline: one pass over all frames (what a driver of at most ``W`` frames always gets).
The video is the first window followed by each later window minus its overlap; only one window's
activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interdyn.errors import ConfigError
from interdyn.models.controlnet import context_input
from interdyn.models.sampling import CONTINUATIONS


@dataclass(frozen=True)
class Window:
    """Frames ``start`` to ``stop`` (exclusive) of the video; the first ``known`` of them were made by
    earlier windows (0 for the first window)."""

    start: int
    stop: int
    known: int


def check_overlap(window: int, overlap: int) -> None:
    """One sentence (``ValueError``) for an overlap a window of ``window`` frames cannot continue with."""
    if not 1 <= overlap < window:
        raise ValueError(
            f"window_overlap must be at least 1 and smaller than the model's window of {window} frames, "
            f"got {overlap}."
        )


def plan_windows(num_frames: int, window: int, overlap: int) -> list[Window]:
    """Windows of ``window`` frames covering ``num_frames``, each starting ``window - overlap`` frames after
    the previous one; the last starts at ``num_frames - window`` (full, holding more known frames). A video
    of at most ``window`` frames is one window of its own length."""
    check_overlap(window, overlap)
    if num_frames <= window:
        return [Window(0, num_frames, 0)]
    plan = [Window(0, window, 0)]
    while plan[-1].stop < num_frames:
        start = min(plan[-1].stop - overlap, num_frames - window)
        plan.append(Window(start, start + window, plan[-1].stop - start))
    return plan


def short_last_window(windows: Sequence[Sequence[int]], overlap: int) -> str | None:
    """A note when the last of ``windows`` (``[start, stop]`` each, as a run records them) was moved back to be
    full and so adds fewer new frames than the others (a whole window sampled for a few frames), naming the
    nearest lengths that give whole steps; None otherwise."""
    if len(windows) < 2:
        return None
    step = (windows[0][1] - windows[0][0]) - overlap
    whole, added = windows[-2][1], windows[-1][1] - windows[-2][1]
    if added >= step:
        return None
    return (
        f"note: the last window adds {added} new frame{'s' if added != 1 else ''} (the others {step}); "
        f"{whole} or {whole + step} frames give every window {step} new ones"
    )


def check_continuation(continuation: str) -> None:
    """One sentence (``ValueError``) for an unknown continuation."""
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation must be one of {CONTINUATIONS}, got {continuation!r}")


def check_context_branch(branch_config: Mapping[str, Any], window: int) -> None:
    """One sentence (:class:`~interdyn.errors.ConfigError`) when a branch of ``branch_config`` cannot continue
    windows of ``window`` frames with ``continuation="context"``: it is no context branch, or it was trained
    on windows of another length."""
    if not branch_config.get("context_frames", 0):
        raise ConfigError(
            "continuation 'context' needs a context branch (trained with context_frames_max > 0), and this "
            "branch takes no context frames; use continuation 'hold' with it"
        )
    trained = branch_config.get("context_window")
    if trained != window:
        raise ConfigError(
            f"this context branch was trained on windows of {trained} frames, but the base's window is "
            f"{window} frames; use it with a base of {trained} frames, or use continuation 'hold'"
        )


class LatentHold:
    """Holds the first frames of a window's latents ``(N, W, C, h, w)`` to ``known`` ``(N, k, C, h, w)``.

    The held frames are set to ``known + sigma * noise``, where ``noise`` is the window's own unit starting
    noise at those frames (taken from the first latents seen) and ``sigma`` the sampler's current noise
    level: call :meth:`start` on the starting latents and :meth:`step` after every sampler step; after the
    last step (sigma 0) the held frames equal ``known``.
    """

    def __init__(self, known: torch.Tensor, context_frames: int = 0) -> None:
        self.known = known.float()
        self.noise: torch.Tensor | None = None
        self.context_frames = min(context_frames, known.shape[1])  # how many a context branch is given

    def context(self, frames: int) -> torch.Tensor | None:
        """A context branch's input for a window of ``frames`` frames: its first ``context_frames`` known
        (None when it gets none)."""
        if not self.context_frames:
            return None
        latents = self.known.new_zeros(self.known.shape[0], frames, *self.known.shape[2:])
        latents[:, : self.context_frames] = self.known[:, : self.context_frames]
        return context_input(latents, self.context_frames)

    def _apply(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        assert self.noise is not None
        k = self.known.shape[1]
        held = self.known.to(latents.device) + sigma * self.noise
        return torch.cat([held.to(latents.dtype), latents[:, k:]], dim=1)

    def start(self, latents: torch.Tensor, sampler: Any) -> torch.Tensor:
        """The starting latents (unit noise times ``sampler.init_noise_sigma``) with the held frames set."""
        k = self.known.shape[1]
        self.noise = latents[:, :k].float() / float(sampler.init_noise_sigma)
        return self._apply(latents, float(sampler.sigmas[0]))

    def step(self, latents: torch.Tensor, sampler: Any) -> torch.Tensor:
        """The latents after a sampler step, the held frames at the sampler's new sigma (0 after the last)."""
        return self._apply(latents, float(sampler.sigmas[sampler.step_index]))


# denoise(pixels (B, 3, H, W), control (B, W, 3, H, W), n samples per input, generator(s), starting noise
# (B * n, W, C, h, w) | None, hold) -> latents (B * n, W, C, h, w)
Denoise = Callable[
    [torch.Tensor, torch.Tensor, int, Any, torch.Tensor | None, LatentHold | None], torch.Tensor
]
# decode(latents (N, W, C, h, w)) -> frames (N, W, 3, H, W) in [-1, 1]
Decode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LongVideo:
    """What long sampling made: each window's latents and decoded frames, and the plan."""

    plan: list[Window]
    latents: list[torch.Tensor]
    frames: list[torch.Tensor]

    def video_latents(self) -> torch.Tensor:
        """``(N, T, C, h, w)``: the first window, then each later window minus its known frames."""
        return assemble(self.latents, self.plan)

    def video_frames(self) -> torch.Tensor:
        """``(N, T, 3, H, W)`` in ``[-1, 1]``, assembled as :meth:`video_latents`."""
        return assemble(self.frames, self.plan)


def assemble(pieces: list[torch.Tensor], plan: list[Window]) -> torch.Tensor:
    """Concatenate per-window tensors ``(N, W, ...)`` along frames, dropping each window's known frames."""
    return torch.cat([piece[:, w.known :] for piece, w in zip(pieces, plan, strict=True)], dim=1)


def row_generators(generator: Any, inputs: int, n: int) -> list[Any]:
    """One generator per sample row of ``inputs`` inputs with ``n`` samples each: each input's own (from a
    list of one per input) or the one given, so that rows draw one at a time and a list of generators gives
    each input the videos it gets alone."""
    if isinstance(generator, list):
        return [g for g in generator for _ in range(n)]
    return [generator] * (inputs * n)


def sample_windows(
    denoise: Denoise,
    decode: Decode,
    pixels: torch.Tensor,
    control: torch.Tensor,
    plan: list[Window],
    continuation: str,
    n: int = 1,
    generator: Any = None,
    latents: torch.Tensor | None = None,
    context_frames: int = 0,
) -> LongVideo:
    """Sample the windows of ``plan`` one after another.

    ``pixels`` are the first window's images ``(B, 3, H, W)`` and ``control`` ``(B, T, 3, H, W)``; the first
    window is ``denoise(pixels, control[:, :W], n, generator, ...)``, as a short clip is sampled. Later
    windows have one row per sample (``n = 1``): the frame at their start from the previous window's
    decoded frames, the control repeated per sample, the generators of :func:`row_generators`, and a
    :class:`LatentHold` of their known frames with ``continuation="hold"`` or ``"context"`` (then giving the
    branch up to ``context_frames`` of them). ``latents`` (starting noise ``(B * n, T, C, h, w)``) is cut
    per window.
    """
    check_continuation(continuation)
    if latents is not None and latents.shape[1] != control.shape[1]:
        raise ValueError(f"latents must have {control.shape[1]} frames, got {tuple(latents.shape)}")
    out = LongVideo(plan, [], [])
    rows, generators = control.repeat_interleave(n, dim=0), row_generators(generator, control.shape[0], n)
    for i, window in enumerate(plan):
        noise = None if latents is None else latents[:, window.start : window.stop]
        if i == 0:
            result = denoise(pixels, control[:, window.start : window.stop], n, generator, noise, None)
        else:
            previous, offset = out.latents[-1], window.start - plan[i - 1].start
            image = out.frames[-1][:, offset].contiguous()
            given = context_frames if continuation == "context" else 0
            held = continuation in ("hold", "context")
            hold = LatentHold(previous[:, offset:], given) if held else None
            result = denoise(image, rows[:, window.start : window.stop], 1, generators, noise, hold)
        out.latents.append(result)
        out.frames.append(decode(result))
    return out
