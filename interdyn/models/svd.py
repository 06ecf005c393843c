"""The frozen Stable Video Diffusion parts: loading them from a folder / hub id, or building them with
random weights from config dicts (tiny models for tests and the demo, full-size ones for benchmarks).

An SVD source is either a string (a local folder or hub id laid out like
``stabilityai/stable-video-diffusion-img2vid``: ``unet/ vae/ image_encoder/ scheduler/``), a preset
name ``"random:tiny"`` / ``"random:svd"``, or a dict ``{"unet": {...}, "vae": {...},
"image_encoder": {...}, "scheduler": {...}, "seed": 0}`` of constructor arguments (missing entries
fall back to the tiny preset's).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from interdyn.errors import ConfigError
from interdyn.models.hub import SVD_REPO, load_component
from interdyn.models.unet import UNetSpatioTemporalControlModel

# The scheduler SVD img2vid ships with (its scheduler/scheduler_config.json).
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}

_VAE_DOWN = ["DownEncoderBlock2D"] * 4

# Full-size SVD img2vid architecture (random weights): for benchmarks and shape checks.
SVD_ARCHITECTURE: dict[str, Any] = {
    "unet": {"num_frames": 14},  # diffusers' defaults are SVD's architecture
    "vae": {
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": _VAE_DOWN,
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
    },
    "image_encoder": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 1024,
        "hidden_act": "gelu",
    },
    "scheduler": SVD_SCHEDULER_CONFIG,
}

# The same block structure as SVD (4 down blocks, 2 layers each; x8 VAE) at a tiny width.
TINY_ARCHITECTURE: dict[str, Any] = {
    "unet": {
        "block_out_channels": [32, 32, 64, 64],
        "num_attention_heads": [2, 2, 4, 4],
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
        "layers_per_block": 2,
        "num_frames": 14,
    },
    "vae": {
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": _VAE_DOWN,
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    },
    "image_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "patch_size": 32,
        "image_size": 224,
        "projection_dim": 32,
    },
    "scheduler": SVD_SCHEDULER_CONFIG,
}

PRESETS = {"random:tiny": TINY_ARCHITECTURE, "random:svd": SVD_ARCHITECTURE}

SVDSource = str | dict[str, Any]


@dataclass
class SVDComponents:
    """The frozen parts of SVD img2vid."""

    unet: UNetSpatioTemporalControlModel
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    scheduler: EulerDiscreteScheduler


def build_svd(config: dict[str, Any]) -> SVDComponents:
    """Build SVD components with random weights from constructor-argument dicts (seeded by ``seed``)."""
    unknown = set(config) - {"unet", "vae", "image_encoder", "scheduler", "seed"}
    if unknown:
        raise ConfigError(
            f"unknown SVD config entries {sorted(unknown)}; expected unet, vae, image_encoder, scheduler, seed"
        )
    cfg = {
        k: copy.deepcopy(config.get(k, TINY_ARCHITECTURE.get(k))) for k in ("unet", "vae", "image_encoder")
    }
    scheduler_cfg = {**SVD_SCHEDULER_CONFIG, **(config.get("scheduler") or {})}
    unet_cfg = cfg["unet"]
    enc_cfg = cfg["image_encoder"]
    unet_ctx = unet_cfg.get("cross_attention_dim", 1024)
    if enc_cfg.get("projection_dim") != unet_ctx:
        raise ConfigError(
            f"image_encoder.projection_dim ({enc_cfg.get('projection_dim')}) must equal unet.cross_attention_dim ({unet_ctx})"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config.get("seed", 0)))
            unet = UNetSpatioTemporalControlModel(**unet_cfg)
            vae = AutoencoderKLTemporalDecoder(**cfg["vae"])
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**enc_cfg))
    except TypeError as err:
        raise ConfigError(f"invalid SVD architecture config: {err}") from None
    return SVDComponents(unet, vae, image_encoder, EulerDiscreteScheduler(**scheduler_cfg))


def load_svd(
    path: str = SVD_REPO,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    vae_float32: bool = False,
) -> SVDComponents:
    """Load SVD img2vid from a local folder or hub id; the UNet is loaded as
    :class:`UNetSpatioTemporalControlModel` (same weights as the stock UNet). With ``vae_float32`` the VAE
    is loaded in float32 whatever ``torch_dtype`` is (a VAE that encodes in float32 is then never rounded
    to a half dtype on the way)."""
    kw: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if variant is not None:
        kw["variant"] = variant
    vae_kw = {**kw, "torch_dtype": torch.float32} if vae_float32 else kw

    def part(cls: type, subfolder: str, **extra: Any) -> Any:
        return load_component(cls, path, subfolder=subfolder, what=f"SVD {subfolder}", kind="svd", **extra)

    unet = part(UNetSpatioTemporalControlModel, "unet", **kw)
    vae = part(AutoencoderKLTemporalDecoder, "vae", **vae_kw)
    image_encoder = part(CLIPVisionModelWithProjection, "image_encoder", **kw)
    scheduler = part(EulerDiscreteScheduler, "scheduler", strict=False, marker="scheduler_config.json")
    return SVDComponents(unet, vae, image_encoder, scheduler)


def get_svd(
    source: SVDSource, torch_dtype: torch.dtype | None = None, vae_float32: bool = False
) -> SVDComponents:
    """Resolve any SVD source (path / hub id, preset name, or config dict) to components; ``torch_dtype``
    and ``vae_float32`` as in :func:`load_svd`."""
    if isinstance(source, dict):
        components = build_svd(source)
    elif source in PRESETS:
        components = build_svd(PRESETS[source])
    elif isinstance(source, str) and source.startswith("random:"):
        raise ConfigError(f"unknown SVD preset {source!r}; available: {sorted(PRESETS)}")
    else:
        return load_svd(source, torch_dtype=torch_dtype, vae_float32=vae_float32)
    if torch_dtype is not None and torch_dtype != torch.float32:
        for module in (components.unet, components.image_encoder) + (
            () if vae_float32 else (components.vae,)
        ):
            module.to(torch_dtype)
    return components


def get_encoders(
    source: SVDSource, torch_dtype: torch.dtype | None = None, vae_float32: bool = False
) -> tuple[AutoencoderKLTemporalDecoder, CLIPVisionModelWithProjection]:
    """Only the VAE and the CLIP image encoder of an SVD source (a saved SVD's UNet is not loaded);
    ``torch_dtype`` and ``vae_float32`` as in :func:`load_svd`."""
    if isinstance(source, str) and not source.startswith("random:"):
        kw: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        vae_kw = {**kw, "torch_dtype": torch.float32} if vae_float32 else kw
        vae = load_component(
            AutoencoderKLTemporalDecoder, source, subfolder="vae", what="SVD vae", kind="svd", **vae_kw
        )
        image_encoder = load_component(
            CLIPVisionModelWithProjection,
            source,
            subfolder="image_encoder",
            what="SVD image_encoder",
            kind="svd",
            **kw,
        )
        return vae, image_encoder
    parts = get_svd(source, torch_dtype, vae_float32=vae_float32)
    return parts.vae, parts.image_encoder


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a frozen diffusers/transformers model's floating weights to ``dtype`` (no-op when they are),
    without diffusers' warning about modules kept in fp32 (SVD's models declare none)."""
    if all(p.dtype == dtype for p in module.parameters() if p.is_floating_point()):
        return
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _checkpointed_forward(forward: Any, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, module, *args, use_reentrant=False, **kwargs)
    return forward(module, *args, **kwargs)


def checkpoint_transformer_layers(model: torch.nn.Module) -> int:
    """Recompute every whole spatio-temporal transformer layer of ``model`` in the backward pass.

    diffusers' gradient checkpointing recomputes the resnets and the *spatial* transformer blocks only:
    the norm, projections, temporal transformer blocks and the mixer of each layer keep their
    activations (most of what a checkpointed SVD step still holds). Wrapping the whole layer keeps only
    its input, for one more forward of the layer per step. The layer's own spatial-block checkpointing
    is switched off (the outer recomputation covers it). Weights and their names are unchanged.
    Returns the number of layers wrapped.
    """
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    count = 0
    for module in model.modules():
        if isinstance(module, TransformerSpatioTemporalModel):
            module.gradient_checkpointing = False
            module.forward = functools.partial(_checkpointed_forward, type(module).forward, module)
            count += 1
    return count


def save_svd(components: SVDComponents, folder: str) -> None:
    """Write components in the hub layout (``unet/ vae/ image_encoder/ scheduler/``), e.g. a tiny
    random SVD for offline tests of the loading path."""
    components.unet.save_pretrained(f"{folder}/unet")
    components.vae.save_pretrained(f"{folder}/vae")
    components.image_encoder.save_pretrained(f"{folder}/image_encoder")
    components.scheduler.save_pretrained(f"{folder}/scheduler")
