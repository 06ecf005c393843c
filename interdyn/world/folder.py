"""Writing an SVD img2vid folder (``unet/ vae/ image_encoder/ scheduler/ feature_extractor/
model_index.json``) that both ``--model.svd`` and diffusers' ``StableVideoDiffusionPipeline`` load."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from interdyn.utils.files import write_folder_atomic


def write_svd_folder(
    out: str | Path,
    unet: torch.nn.Module,
    vae: AutoencoderKLTemporalDecoder,
    image_encoder: CLIPVisionModelWithProjection,
    scheduler: EulerDiscreteScheduler,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Save the parts as a diffusers SVD img2vid folder with ``dtype`` weights (safetensors), atomically.

    ``unet`` may be interdyn's control-ready subclass: it is saved as the stock
    ``UNetSpatioTemporalConditionModel`` (the same weights), so that diffusers loads it as SVD's.
    """
    stock = UNetSpatioTemporalConditionModel.from_config(unet.config)
    stock.load_state_dict(unet.state_dict())
    image_size = int(image_encoder.config.image_size)
    pipe = StableVideoDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype),
        image_encoder=copy.deepcopy(image_encoder).to(dtype),
        unet=stock.to(dtype),
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
    )
    return write_folder_atomic(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
