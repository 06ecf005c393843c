"""The Wan2.2 TI2V-5B training recipes that ``benchmarks/wan_analysis.py`` analyses on fake tensors and
``benchmarks/wan_step.py`` times on a GPU: the branch's settings (gradient checkpointing, optimiser), how
the step is spread over the GPUs (DDP, FSDP, FSDP with its CPU offload) and the clip.

Every recipe trains :class:`~interdyn.models.wan.WanControlNetModel` with its default layers (``"half"``)
on the frozen transformer stored in bf16 (its float32-kept norms and time embedder as diffusers loads
them) under bf16 autocast with the branch in float32, as Lightning's ``bf16-mixed`` does.
"""

from __future__ import annotations

from typing import Any

import torch

from interdyn.data.clip_spec import WAN_SSV2_CLIP

# configs/wan_ssv2.yaml's clip (interdyn.data.clip_spec.WAN_SSV2_CLIP): 49 frames (1 + 4 x 12, 13 latent
# frames) at SSV2's own 12 fps, about 4 s, at the paper's 256x384.
WAN_CLIP = {"frames": WAN_SSV2_CLIP.num_frames, "height": WAN_SSV2_CLIP.height, "width": WAN_SSV2_CLIP.width}
# The larger clip the analysis also counts: SSV2's 240p videos (about 16:9) upsampled x2 to 480x832, the
# lower of the sizes Wan2.2 TI2V-5B generates well.
WAN_LARGE_CLIP = {"frames": 49, "height": 480, "width": 832}
WAN_NATIVE_CLIP = {"frames": 121, "height": 704, "width": 1280}  # the backbone's own default output
TINY_CLIP = {"frames": 5, "height": 64, "width": 64}  # the dry run's, on the tiny preset

# What torch reports as total memory (GiB), about 0.5 GiB under nvidia-smi's total: an 80 GB H100 (the
# paper's machines, 81,559 MiB); a 48 GB card, the smallest of the class (L40S with ECC, 46,068 MiB; RTX
# A6000 and RTX 6000 Ada show 49,140 MiB, about 47.5 GiB to torch). Assumed, not read from a card here.
CARD_GIB = {"80gb": 79.1, "48gb": 44.5}

WAN_RECIPES: dict[str, dict[str, Any]] = {
    # DDP on 2 GPUs, nothing saved: the baseline the others are measured against
    "bf16": {"card": "80gb", "gpus": 2, "strategy": "ddp", "checkpointing": False, "batch": 1},
    "bf16+ckpt": {"card": "80gb", "gpus": 2, "strategy": "ddp", "checkpointing": True, "batch": 1},
    # configs/wan_ssv2.yaml: DDP, checkpointing, 2 clips per GPU, 2 accumulated -> 8 per optimizer step
    "2x80gb": {
        "card": "80gb", "gpus": 2, "strategy": "ddp", "checkpointing": True, "batch": 2, "accumulate": 2,
    },
    "2x80gb+cache": {
        "card": "80gb", "gpus": 2, "strategy": "ddp", "checkpointing": True, "batch": 2, "accumulate": 2,
        "cached": True,
    },
    # for comparison: Lightning's FSDPStrategy (full shard) sharding the frozen transformer and the branch
    "2x80gb-fsdp": {
        "card": "80gb", "gpus": 2, "strategy": "fsdp", "checkpointing": True, "batch": 2, "accumulate": 2,
    },
    # configs/wan_48gb.yaml: one card, Adam's moments in host memory, the VAE encoding in the step (as
    # InterDynWanModule trains); +cache: with the latents cached instead, the VAE off the device
    "48gb": {
        "card": "48gb", "gpus": 1, "strategy": "single", "checkpointing": True, "batch": 1, "accumulate": 8,
        "optimizer": "adam_offload",
    },
    "48gb+cache": {
        "card": "48gb", "gpus": 1, "strategy": "single", "checkpointing": True, "batch": 1, "accumulate": 8,
        "cached": True, "optimizer": "adam_offload",
    },
    "48gb, Adam on GPU": {
        "card": "48gb", "gpus": 1, "strategy": "single", "checkpointing": True, "batch": 1, "accumulate": 8,
    },
    # the fallback that always fits: FSDP's CPU offload (weights, gradients and the Adam step on the host)
    "48gb-fsdp-offload": {
        "card": "48gb", "gpus": 1, "strategy": "fsdp_offload", "checkpointing": True, "batch": 1,
        "accumulate": 8,
    },
}  # fmt: skip
# The shipped configs and the recipe that models each.
WAN_CONFIG_RECIPES = {"configs/wan_ssv2.yaml": "2x80gb", "configs/wan_48gb.yaml": "48gb"}
# The recipes `make gpu-check` times on one CUDA GPU (per GPU: the 2-GPU recipe's step on one of them).
WAN_GPU_RECIPES = ["2x80gb", "48gb"]


def describe(recipe: dict[str, Any]) -> str:
    """The recipe's settings in a few words."""
    where = {
        "ddp": f"DDP on {recipe['gpus']} GPUs",
        "fsdp": f"FSDP full shard on {recipe['gpus']} GPUs",
        "fsdp_offload": "FSDP with CPU offload on 1 GPU",
        "single": "1 GPU",
    }[recipe["strategy"]]
    parts = [where, "checkpointing" if recipe.get("checkpointing") else "no checkpointing"]
    parts.append("cached latents" if recipe.get("cached") else "VAE encodes in the step")
    optimizer = recipe.get("optimizer", "adam")
    if recipe["strategy"] == "fsdp_offload":
        optimizer = "adam on the host"
    parts.append(optimizer)
    return ", ".join(parts)


def keep_fp32_cast(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen transformer's weights to ``dtype`` in place, except those of the modules diffusers
    keeps in float32 when it loads the model in a lower precision (``_keep_in_fp32_modules``: norms, time
    embedder, modulation tables), as ``from_pretrained(torch_dtype=...)`` leaves them."""
    keep = getattr(transformer, "_keep_in_fp32_modules", None) or []
    for name, param in transformer.named_parameters():
        if not any(k in name.split(".") for k in keep):
            param.data = param.data.to(dtype)
