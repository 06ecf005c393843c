"""Clip folders shaped like the authors' released ``examples/<id>/``: a 12 fps VP9 ``video.webm`` of odd
width, a grey ``mask_hand.webm`` with VP9's codec noise, and ``mask_<object>.webm`` of other lengths (in the
release the hand mask and the video have 28 frames, the object masks 37 to 68)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interdyn.data.video import encode_video

HEIGHT, WIDTH, FPS = 60, 97, 12.0  # odd width, as SSV2's 427x240
MASK_GREY = 170  # the masks are grey, not white; VP9 adds ringing around their edges


def hand_masks(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(T, H, W) bool: a hand-sized box moving right by 2 pixels per frame, visible from frame 0."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        masks[t, 20:44, 25 + 2 * t : 45 + 2 * t] = True
    return masks


def object_masks(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(T, H, W) bool: a still object on the right."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    masks[:, 30:50, 70:88] = True
    return masks


def scene(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: textured background, a blue object, the hand where its masks are."""
    rng = np.random.default_rng(seed)
    t, h, w = masks.shape
    background = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    frames = np.repeat(background[None], t, axis=0)
    frames[:, 30:50, 70:88] = (40, 90, 200)
    frames[masks] = (220, 170, 140)
    return frames


def grey_mask_video(masks: np.ndarray, fps: float = FPS) -> bytes:
    """A lossy VP9 mask video: grey where the mask is, black elsewhere (decoded values are noisy)."""
    rgb = np.repeat(masks[..., None].astype(np.uint8) * MASK_GREY, 3, axis=-1)
    return encode_video(rgb, fps, codec="libvpx-vp9", crf=40)


def write_example(
    folder: Path,
    video_frames: int = 28,
    hand_frames: int | None = None,
    objects: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """One example folder; ``hand_frames`` defaults to the video's length, ``objects`` maps names to lengths
    (default: ``cup`` 37 and ``box`` 68 frames, both longer than the video, as in the release)."""
    folder.mkdir(parents=True)
    hand = hand_masks(max(video_frames, hand_frames or video_frames))
    (folder / "video.webm").write_bytes(
        encode_video(scene(hand[:video_frames], seed), FPS, codec="libvpx-vp9")
    )
    (folder / "mask_hand.webm").write_bytes(grey_mask_video(hand[: hand_frames or video_frames]))
    for name, length in (objects if objects is not None else {"cup": 37, "box": 68}).items():
        (folder / f"mask_{name}.webm").write_bytes(grey_mask_video(object_masks(length)))
    return folder
