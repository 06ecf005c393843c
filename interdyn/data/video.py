"""Video encoding and decoding with PyAV (torchvision has no video IO).

Decoding stops after the last frame a clip needs and converts only the frames it keeps, with a bounded
number of decoder threads (:func:`decoder_threads`).
"""

from __future__ import annotations

import io
import os
import platform
import re
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np


class VideoDecodeError(RuntimeError):
    """The video bytes could not be decoded (corrupt, truncated, unknown codec, too few frames)."""


def _local_ranks() -> int:
    """Processes that share this node's cores: torchrun's ``LOCAL_WORLD_SIZE``, SLURM's tasks per node,
    else ``WORLD_SIZE`` (set by Lightning's launcher; on several nodes an overestimate, so fewer threads)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE"):
        found = re.match(r"\d+", os.environ.get(name, ""))
        if found and int(found.group()) > 0:
            return int(found.group())
    return 1


def decoder_threads() -> int:
    """Threads for one video decoder: this process's cores shared by the loader workers of its DataLoader
    and by the ranks on the node (at least 1). FFmpeg's automatic count is one thread per core in *every*
    decoder, which with 8 workers on each of 2 ranks oversubscribes the CPU sixteen times over."""
    from torch.utils.data import get_worker_info  # here: encoding alone does not need torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = get_worker_info()
    workers = info.num_workers if info is not None else 1
    return max(1, cores // (workers * _local_ranks()))


# Encoder settings that depend on nothing but the frames: one encoder thread, no slice, row or lookahead
# threads (PyAV's default is as many threads as cores, with slice threading), a fixed speed preset
# (libvpx's realtime deadline adapts its effort to the time it has, so the "good" deadline is pinned).
DETERMINISTIC_OPTIONS = {
    "libx264": {
        "preset": "fast",
        "threads": "1",
        "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0",
    },
    "libvpx-vp9": {"deadline": "good", "threads": "1", "row-mt": "0"},
}


# The instruction sets x264 may use (its ``asm`` parameter, a mask of x264.h's CPU flags): on x86-64 its
# MMX, MMX2, SSE and SSE2 code (flags 1, 2, 4, 8), which every x86-64 CPU has and which writes the same
# bytes as x264's C code; elsewhere the C code. x264's own choice depends on the CPU: its SSSE3 and later
# code writes other bytes than its C code, and its AVX-512 code other bytes from one process to the next
# (None: x264's own choice).
X264_ASM: int | None = 1 | 2 | 4 | 8 if platform.machine().lower() in ("x86_64", "amd64") else 0


def encoder_options(codec: str, crf: int) -> dict[str, str]:
    """The encoder options of :func:`encode_video` for ``codec``: the quality (``crf``) and the settings
    that make the same frames give the same bytes in any process, under any load, on any core count and
    any CPU of the same architecture (:data:`X264_ASM`)."""
    options = dict(DETERMINISTIC_OPTIONS.get(codec, {"threads": "1"}))
    if codec == "libx264":
        options["crf"] = str(crf)  # libvpx keeps its default rate control, as it always has here
        if X264_ASM is not None:
            options["x264-params"] += f":asm={X264_ASM}"
    return options


def encode_video(frames: np.ndarray, fps: float, codec: str = "libx264", crf: int = 18) -> bytes:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames to mp4 (libx264, yuv420p; even sizes) or webm (libvpx-vp9).

    The same frames always give the same bytes (:data:`DETERMINISTIC_OPTIONS`): one encoder thread,
    no slice or lookahead threads, whatever else runs on the machine (the parallelism of the preparers
    is across videos), x264's code for the instruction sets every x86-64 CPU has (:data:`X264_ASM`), the
    RGB to YUV conversion in one thread, and a WebM container without its random segment id or date."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if codec == "libx264" and (h % 2 or w % 2):
        raise ValueError(f"libx264 needs even frame sizes, got {h}x{w}")
    buffer = io.BytesIO()
    fmt = "webm" if codec.startswith("libvpx") else "mp4"
    # The WebM muxer writes a random segment id and the muxing date unless told to be bit-exact.
    muxer = {"fflags": "+bitexact"} if fmt == "webm" else {}
    with av.open(buffer, mode="w", format=fmt, container_options=muxer) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # PyAV opens encoders with an automatic thread count and slice threading: both off
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.options = encoder_options(codec, crf)
        for frame in frames:
            # RGB -> YUV here, in one thread: PyAV's own conversion slices the frame over as many threads
            # as there are cores
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", threads=1)
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def probe_video(data: bytes) -> tuple[int, float, int, int]:
    """``(num_frames, fps, height, width)`` from the container header (frames may be 0 if unknown)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            return int(stream.frames or 0), fps, stream.height, stream.width
    except (av.FFmpegError, IndexError) as err:
        raise VideoDecodeError(f"cannot read video header: {err}") from err


def decode_frames(data: bytes, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` (ascending, repeats allowed) -> ``(len(indices), H, W, 3)`` uint8.

    ``None`` decodes every frame. Raises :class:`VideoDecodeError` for corrupt data or when the video
    has fewer frames than the largest index.
    """
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    last = None if wanted is None else wanted[-1]
    kept: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = decoder_threads()
            want_set = None if wanted is None else set(wanted)
            for i, frame in enumerate(container.decode(stream)):
                if want_set is None or i in want_set:
                    kept[i] = frame.to_ndarray(format="rgb24")
                if last is not None and i >= last:
                    break
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise VideoDecodeError(f"cannot decode video: {err}") from err
    if indices is None:
        if not kept:
            raise VideoDecodeError("the video has no frames")
        return np.stack([kept[i] for i in sorted(kept)])
    missing = [i for i in wanted if i not in kept]
    if missing:
        raise VideoDecodeError(
            f"the video has {len(kept) and max(kept) + 1} frames, the clip needs frame {missing[0]}"
        )
    return np.stack([kept[int(i)] for i in indices])
