"""Helpers shared by test modules (fixtures live in conftest.py): tiny models and batches, running the
``interdyn`` command, released-style folders, the authors' example clip folders and the input files of
``interdyn generate``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from interdyn.commands.cli import main
from interdyn.data import MovingShapesDataset
from interdyn.data.video import decode_frames, encode_video
from interdyn.models.controlnet import SHARED_CONFIG, ControlNetSDVModel
from interdyn.models.svd import TINY_ARCHITECTURE
from interdyn.models.unet import UNetSpatioTemporalControlModel
from interdyn.training.module import InterDynModule
from interdyn.training.settings import nest_settings

# The branch config fields of the released checkpoint's controlnet/config.json
RELEASED_CONFIG_FIELDS = {*SHARED_CONFIG, "conditioning_channels", "conditioning_embedding_out_channels"}


def run_interdyn(
    *args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> subprocess.CompletedProcess:
    """``interdyn *args`` in this process, from ``cwd``: its exit code and output, as a process would give."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


REPO_ROOT = Path(__file__).resolve().parents[1]


FRAMES, FPS = 30, 14.0


TINY_CONTROL_CHANNELS = (8, 16, 16, 32)


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with N(0, scale^2) noise (non-zero residual convs, etc.)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def unet_inputs(
    batch: int = 2, frames: int = 3, size: int = 64, seed: int = 0, control_channels: int = 3
) -> dict:
    """Random inputs for the tiny UNet / branch (latents at size/8)."""
    gen = torch.Generator().manual_seed(seed)
    h = size // 8
    return {
        "sample": torch.randn(batch, frames, 8, h, h, generator=gen),
        "timestep": torch.rand(batch, generator=gen),
        "encoder_hidden_states": torch.randn(batch, 1, 32, generator=gen),
        "added_time_ids": torch.tensor([[6.0, 40.0, 0.02]]).expand(batch, 3),
        "controlnet_cond": torch.rand(batch, frames, control_channels, size, size, generator=gen) * 2 - 1,
    }


def assert_same_model(
    loaded: torch.nn.Module, original: torch.nn.Module, outputs: tuple = (), atol: float = 1e-6
) -> None:
    """A model read back from disk holds exactly the original's weights, and gives its outputs.

    Outputs are compared to ``atol`` and not bit for bit: tensors read from a file sit at other memory
    alignments, for which the CPU's kernels may sum in another order (seen with one thread per process).
    """
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for x, y in outputs:
        torch.testing.assert_close(x, y, rtol=0.0, atol=atol)


def unet_args(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "controlnet_cond"}


def short_fit_trainer(**kw) -> L.Trainer:
    """A quiet CPU trainer for two training steps, validating one batch after the second."""
    steps = {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0}
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(accelerator="cpu", **{**steps, **quiet, **kw})


def tiny_module(**kw) -> InterDynModule:
    """InterDynModule on the tiny random SVD; settings of its groups may be given by name
    (``num_inference_steps=2`` for ``sampling={"num_inference_steps": 2}``)."""
    kw.setdefault("svd", {**TINY_ARCHITECTURE, "seed": 0})
    kw.setdefault("conditioning_embedding_out_channels", TINY_CONTROL_CHANNELS)
    kw.setdefault("num_inference_steps", 2)
    return InterDynModule(**nest_settings(kw))


def toy_batch(n: int = 2, frames: int = 6, size: int = 64) -> dict:
    """``n`` toy clips of ``frames`` square frames of ``size`` pixels as one batch, with their keys."""
    data = MovingShapesDataset(n, num_frames=frames, height=size, width=size, seed=3)
    items = [data[i] for i in range(n)]
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "control": torch.stack([it["control"] for it in items]),
        "key": [it["key"] for it in items],
    }


def interdyn(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-c", "from interdyn.commands.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def run_cli(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def released_folder(tmp_path, branch: ControlNetSDVModel):
    """A folder laid out like the released `controlnet/` (config without our marker)."""
    folder = tmp_path / "InterDyn" / "controlnet"
    folder.mkdir(parents=True)
    config = {k: v for k, v in branch.config.items() if k in RELEASED_CONFIG_FIELDS}
    config["_class_name"] = "ControlNetSDVModel"
    config["_diffusers_version"] = "0.29.2"
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in branch.state_dict().items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    return folder.parent


class ReleasedStyleUNet(UNetSpatioTemporalControlModel):
    """The released InterDyn UNet's behaviour: residuals added inside the down-block loop, so every
    skip already collected gets its residual again after each later block."""

    def _run_down_blocks(self, hidden, emb, context, image_only_indicator, residuals):
        skips = (hidden,)
        for block in self.down_blocks:
            kwargs = (
                {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            )
            hidden, block_skips = block(
                hidden_states=hidden, temb=emb, image_only_indicator=image_only_indicator, **kwargs
            )
            skips += block_skips
            if residuals is not None:
                skips = tuple(
                    s + r for s, r in zip(skips, residuals, strict=False)
                )  # stops at the skips so far
        return hidden, skips


# Example folders -------------------------------------------------------------
# Clip folders shaped like the authors' released ``examples/<id>/``: a 12 fps VP9 ``video.webm`` of odd
# width, a grey ``mask_hand.webm`` with VP9's codec noise, and ``mask_<object>.webm`` of other lengths (in the
# release the hand mask and the video have 28 frames, the object masks 37 to 68).
EXAMPLE_HEIGHT, EXAMPLE_WIDTH, EXAMPLE_FPS = 60, 97, 12.0  # odd width, as SSV2's 427x240
MASK_GREY = 170  # the masks are grey, not white; VP9 adds ringing around their edges


def hand_masks(num_frames: int, height: int = EXAMPLE_HEIGHT, width: int = EXAMPLE_WIDTH) -> np.ndarray:
    """(T, H, W) bool: a hand-sized box moving right by 2 pixels per frame, visible from frame 0."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        masks[t, 20:44, 25 + 2 * t : 45 + 2 * t] = True
    return masks


def object_masks(num_frames: int, height: int = EXAMPLE_HEIGHT, width: int = EXAMPLE_WIDTH) -> np.ndarray:
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


def grey_mask_video(masks: np.ndarray, fps: float = EXAMPLE_FPS) -> bytes:
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
        encode_video(scene(hand[:video_frames], seed), EXAMPLE_FPS, codec="libvpx-vp9")
    )
    (folder / "mask_hand.webm").write_bytes(grey_mask_video(hand[: hand_frames or video_frames]))
    for name, length in (objects if objects is not None else {"cup": 37, "box": 68}).items():
        (folder / f"mask_{name}.webm").write_bytes(grey_mask_video(object_masks(length)))
    return folder


# Tiny datasets in the real layouts (drawn moving shapes, real encoded videos) ----------------
H, W = 64, 96
SIZE = 16  # the moving square's side


def square_box(t: int, x0: int = 4, y0: int = 20, speed: int = 2) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the square at frame t (moves right)."""
    x = x0 + speed * t
    return x, y0, x + SIZE, y0 + SIZE


def moving_square_video(
    num_frames: int, height: int = H, width: int = W, **box_kw
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 with a bright square moving right over grey, and its exact masks."""
    frames = np.full((num_frames, height, width, 3), 60, dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        x1, y1, x2, y2 = square_box(t, **box_kw)
        frames[t, y1:y2, x1:x2] = (230, 180, 140)
        masks[t, y1:y2, x1:x2] = True
    return frames, masks


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str = "libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, codec=codec))
    return path


def read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard in a split folder: key -> {extension: bytes}."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def load_masks(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# Inputs of `interdyn generate` as real files (tests/commands/test_generate*.py) ----------------
SOURCE_HEIGHT, SOURCE_WIDTH = 80, 120  # resized and cropped by the tests to their size
SOURCE_FRAMES, SOURCE_FPS = 30, 14.0  # 14 frames at 7 FPS need 27 source frames at 14 fps


def square_masks(num_frames: int, dx: int = 2, dy: int = 0, x0: int = 10, y0: int = 30) -> np.ndarray:
    """(T, H, W) bool at the source size: a 20-pixel square moving by (dx, dy) per frame."""
    masks = np.zeros((num_frames, SOURCE_HEIGHT, SOURCE_WIDTH), dtype=bool)
    for t in range(num_frames):
        x, y = x0 + dx * t, y0 + dy * t
        masks[t, y : y + 20, x : x + 20] = True
    return masks


def _as_rgb(masks: np.ndarray) -> np.ndarray:
    return np.repeat(masks[..., None].astype(np.uint8) * 255, 3, axis=-1)


def write_mask_video(path: Path, masks: np.ndarray, fps: float = SOURCE_FPS) -> Path:
    path.write_bytes(encode_video(_as_rgb(masks), fps, codec="libvpx-vp9"))
    return path


def write_mask_folder(folder: Path, masks: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for t, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{t}.png")
    return folder


def scene_frames(masks: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 at the source size: grey background, a blue disc, the driver where the masks are."""
    frames = np.full((len(masks), SOURCE_HEIGHT, SOURCE_WIDTH, 3), 90, dtype=np.uint8)
    frames[:, 40:60, 70:90] = (40, 160, 220)
    frames[masks] = (220, 180, 140)
    return frames


def write_generate_inputs(root: Path) -> dict[str, Path]:
    """Every input file of the ``interdyn generate`` tests, written in ``root``, by name."""
    masks = square_masks(SOURCE_FRAMES)
    Image.fromarray(scene_frames(masks)[0]).save(root / "scene.png")
    f = {"image": root / "scene.png", "hand": write_mask_video(root / "hand.webm", masks)}
    # Counterfactual controls in the three formats: a video, a folder of images (7 fps), a .npz with fps.
    f["a"] = write_mask_video(root / "a.webm", square_masks(SOURCE_FRAMES, dx=2))
    f["b"] = write_mask_folder(root / "b", square_masks(14, dx=0, dy=2, x0=50, y0=4))
    np.savez_compressed(root / "c.npz", control=square_masks(SOURCE_FRAMES, dx=-2, x0=95), fps=SOURCE_FPS)
    f["c"] = root / "c.npz"
    # A clip folder: H.264 video, driver masks as images, a second object's masks as .npz.
    clip = root / "clips" / "243"
    clip.mkdir(parents=True)
    (clip / "video.mp4").write_bytes(encode_video(scene_frames(masks), SOURCE_FPS))
    write_mask_folder(clip / "mask_hand", masks)
    np.savez_compressed(clip / "mask_cup.npz", control=np.zeros_like(masks))
    f["clip"] = clip
    # Bad inputs.
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "broken.webm").write_bytes(b"this is not a video")
    f["broken_image"], f["broken_control"] = root / "broken.png", root / "broken.webm"
    nothing = np.zeros((SOURCE_FRAMES, SOURCE_HEIGHT, SOURCE_WIDTH), dtype=bool)
    f["empty"] = write_mask_video(root / "empty.webm", nothing)
    f["short"] = write_mask_video(root / "short.webm", square_masks(10))
    small = np.zeros((SOURCE_FRAMES, 64, 96), dtype=bool)
    small[:, 20:40, 20:40] = True
    f["small"] = write_mask_video(root / "small.webm", small)
    bare = root / "clips" / "bare"
    bare.mkdir()
    (bare / "video.mp4").write_bytes(encode_video(scene_frames(masks), SOURCE_FPS))
    f["bare_clip"] = bare
    torch.save({"state_dict": {}}, root / "foreign.ckpt")
    f["foreign_ckpt"] = root / "foreign.ckpt"
    return f


def decoded(path: Path) -> np.ndarray:
    """The frames of a video file, (T, H, W, 3) uint8."""
    return decode_frames(path.read_bytes())


def phase_table(printed: str) -> tuple[str, dict[str, tuple[float, str]]]:
    """The time-by-phase table in a command's output (:meth:`interdyn.utils.timing.PhaseTimes.table`):
    its title, and each row's seconds and note (``"total"`` included), in the order printed."""
    lines = printed.splitlines()
    first = next(i for i, line in enumerate(lines) if line.endswith(": time by phase"))
    rows: dict[str, tuple[float, str]] = {}
    for line in lines[first + 1 :]:
        name, sep, rest = line.strip().partition("  ")
        if not line.startswith("  ") or not sep:
            break
        seconds, _, note = rest.strip().partition("  ")
        if " min " in seconds:
            minutes, _, secs = seconds.partition(" min ")
            value = 60 * int(minutes) + float(secs.removesuffix(" s"))
        else:
            value = float(seconds.removesuffix(" s"))
        rows[name] = (value, note.strip().removeprefix("(").removesuffix(")"))
        if name == "total":
            break
    return lines[first].removesuffix(": time by phase"), rows
