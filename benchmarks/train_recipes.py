"""The training recipes the benchmarks measure: module switches of :class:`~interdyn.training.module.InterDynModule`
plus the loop's settings (autocast, cached conditioning, micro-batch and accumulation), each as the
shipped configs set them. See ``benchmarks/train_step.py`` for what each one is."""

from __future__ import annotations

from typing import Any

from interdyn.training.settings import nest_settings

RECOMMENDED = {  # configs/ssv2.yaml (memory: docs/benchmarks.md, "Memory per GPU of the shipped configs")
    "frozen_dtype": "bfloat16",
    "autocast": "bfloat16",
    "gradient_checkpointing": True,
    "unet_gradient_checkpointing": True,
}
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {"frozen_dtype": "float16", "autocast": None},
    "bf16": {"frozen_dtype": "bfloat16", "autocast": "bfloat16"},
    "bf16+ckpt": {"frozen_dtype": "bfloat16", "autocast": "bfloat16", "gradient_checkpointing": True},
    "bf16+ckpt+unet_ckpt": {
        "frozen_dtype": "bfloat16",
        "autocast": "bfloat16",
        "gradient_checkpointing": True,
        "unet_gradient_checkpointing": True,
    },
    "recommended": RECOMMENDED,
    "fused": {"frozen_dtype": "float16", "autocast": None, "fused_optimizer": True},
    "compile": {"frozen_dtype": "float16", "autocast": None, "compile": True},
    "cached": {"frozen_dtype": "float16", "autocast": None, "cached": True},
    "recommended+cache": {**RECOMMENDED, "cached": True},
}
# configs/ssv2_24gb.yaml. `batch` is the micro-batch, `accumulate` the micro-batches per optimizer step.
RECIPE_24GB: dict[str, Any] = {
    **RECOMMENDED,
    "cached": True,
    "offload_encoders": True,
    "fine_checkpointing": True,
    "optimizer": "adam_offload",
    "batch": 4,
    "accumulate": 2,
}
RECIPES["24gb"] = RECIPE_24GB
ANALYZED = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "recommended", "recommended+cache", "24gb"]
NOT_MODULE_ARGS = ("autocast", "cached", "batch", "accumulate")
# Bytes of optimizer state per trainable parameter: Adam's two fp32 moments; bitsandbytes' blockwise
# 8-bit AdamW keeps two uint8 moments plus one fp32 scale per 256 values and moment (small tensors
# under 4096 values stay 32-bit: under 0.1 % of the branch).
# adam_offload keeps none on the GPU between steps (a chunk's moments during the step: OFFLOAD_CHUNK_BYTES).
STATE_BYTES = {"adam": 8.0, "adam_offload": 0.0, "adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256}
OFFLOAD_CHUNK_BYTES = 2 * 256 * 2**20  # the two moments of OffloadedAdam's default 256 MiB chunk
ALLOCATOR_SLACK = 0.10  # assumed: caching-allocator fragmentation on top of the allocated peak
CUDA_CONTEXT_GIB = 0.5  # assumed: the CUDA context, outside PyTorch's allocator
CARD_24GB_GIB = 23.6  # what torch reports as total memory on a 24 GB card (RTX 3090 / 4090)
# The shipped GPU configs and the recipe that models each one (the analysis' per-config table).
CONFIG_RECIPES = {"configs/ssv2.yaml": "recommended", "configs/ssv2_24gb.yaml": "24gb"}
# compile is left out on CPU: inductor needs over ten minutes to compile the UNet on 2 cores
CPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "fused", "cached"]
GPU_RECIPES = ["plain", "bf16", "bf16+ckpt", "bf16+ckpt+unet_ckpt", "recommended", "recommended+cache"]
TINY_CONTROL = [8, 16, 16, 32]


def module_kwargs(recipe: dict[str, Any], preset: str, device: str) -> dict[str, Any]:
    """The :class:`~interdyn.training.module.InterDynModule` arguments of ``recipe`` for the ``random:<preset>`` model."""
    kw = {k: v for k, v in recipe.items() if k not in NOT_MODULE_ARGS}
    if device == "cpu" and kw.get("frozen_dtype") == "float16":
        kw["frozen_dtype"] = "float32"  # CPU fp16 kernels are a poor baseline; fp32 is the CPU plain
    kw["svd"] = f"random:{preset}"
    if preset == "tiny":
        kw["conditioning_embedding_out_channels"] = TINY_CONTROL
    return nest_settings(kw)  # the recipes name settings flat; the module takes their groups


def switches(recipe: dict[str, Any]) -> str:
    """The recipe's settings in config terms."""
    parts = [f"frozen {recipe.get('frozen_dtype', 'float16')}"]
    if recipe.get("autocast"):
        parts.append(f"{recipe['autocast']} autocast")
    ckpt = [
        n
        for n, k in (("branch", "gradient_checkpointing"), ("UNet", "unet_gradient_checkpointing"))
        if recipe.get(k)
    ]
    if ckpt:
        parts.append(
            "checkpointing "
            + " + ".join(ckpt)
            + (" (whole layers)" if recipe.get("fine_checkpointing") else "")
        )
    if recipe.get("cached"):
        parts.append(
            "cached conditioning" + (", encoders off the device" if recipe.get("offload_encoders") else "")
        )
    parts.append(recipe.get("optimizer", "adam"))
    if recipe.get("accumulate", 1) > 1:
        parts.append(f"accumulate {recipe['accumulate']}")
    return ", ".join(parts)
