"""Hand masks from SAM2: the video predictor prompted with each hand track's boxes (every k-th
annotated frame, and the last), propagated over the video, all hands merged into one mask per frame.

``Sam2Settings(checkpoint=None)`` builds SAM2 with random weights (tests only). Predictors are built
once per process and settings; each call counts its frames (``sam2_frames``) for the part's speed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.chunk import count
from data_prep.ssv2_annotations import Box, SSV2InputError

DEFAULT_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"


@dataclass
class Sam2Settings:
    """How to build the SAM2 video predictor. ``checkpoint=None`` means random weights (tests only)."""

    checkpoint: str | None
    config: str = DEFAULT_SAM2_CONFIG
    device: str | None = None
    prompt_every: int = 1
    hydra_overrides: list[str] = field(default_factory=list)


_PREDICTORS: dict[tuple, Any] = {}


def sam2_predictor(settings: Sam2Settings) -> Any:
    """The SAM2 video predictor of ``settings`` (built once per process)."""
    key = (settings.checkpoint, settings.config, settings.device, tuple(settings.hydra_overrides))
    if key not in _PREDICTORS:
        try:
            import torch
            from sam2.build_sam import build_sam2_video_predictor
        except ImportError:
            raise SSV2InputError(
                "--masks sam2 needs the sam2 package: pip install -e '.[sam2]' (or use --masks boxes)"
            ) from None
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        _PREDICTORS[key] = build_sam2_video_predictor(
            settings.config,
            settings.checkpoint,
            device=device,
            hydra_overrides_extra=list(settings.hydra_overrides),
        )
    return _PREDICTORS[key]


def sam2_masks(frames: np.ndarray, tracks: list[dict[int, Box]], settings: Sam2Settings) -> np.ndarray:
    """Hand masks ``(T, H, W)``: SAM2 prompted with each track's boxes, propagated, hands merged."""
    import torch
    from PIL import Image

    predictor = sam2_predictor(settings)
    t, h, w, _ = frames.shape
    masks = np.zeros((t, h, w), dtype=bool)
    device = getattr(predictor, "device", torch.device("cpu"))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if getattr(device, "type", "cpu") == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    with tempfile.TemporaryDirectory(prefix="interdyn-sam2-") as tmp, torch.inference_mode(), autocast:
        for i, frame in enumerate(frames):  # SAM2 reads a folder of numbered JPEGs
            Image.fromarray(frame).save(Path(tmp) / f"{i:05d}.jpg", quality=95)
        state = predictor.init_state(
            video_path=tmp, offload_video_to_cpu=True, offload_state_to_cpu=device.type != "cuda"
        )
        prompted = False
        for obj_id, track in enumerate(tracks):
            frames_with_box = sorted(f for f in track if f < t)
            chosen = frames_with_box[:: max(1, settings.prompt_every)]
            if frames_with_box and frames_with_box[-1] not in chosen:
                chosen.append(frames_with_box[-1])
            for f in chosen:
                predictor.add_new_points_or_box(
                    state, frame_idx=f, obj_id=obj_id, box=np.asarray(track[f], dtype=np.float32)
                )
                prompted = True
        if not prompted:
            return masks
        for frame_idx, _obj_ids, logits in predictor.propagate_in_video(state):
            masks[frame_idx] = (logits > 0).any(dim=0).reshape(h, w).cpu().numpy()
        predictor.reset_state(state)
    count("sam2_frames", t)  # each part reports SAM2 frames per second
    return masks
