"""The frozen Wan2.2 TI2V parts (transformer, VAE, scheduler): loading them from a diffusers folder or hub
id, or building them with random weights from config dicts (a tiny model for tests, the full-size
architecture for meta-device analysis).

A Wan source is a string (a local folder or hub id laid out like ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``:
``transformer/ vae/ scheduler/``; its ``text_encoder/`` and ``tokenizer/`` are never loaded here, see
:mod:`interdyn.models.wan.prompt`), a preset name ``"random:wan-tiny"`` / ``"random:wan2.2-ti2v-5b"``, or a
dict ``{"transformer": {...}, "vae": {...}, "scheduler": {...}, "seed": 0}`` of constructor arguments
(missing entries fall back to the tiny preset's).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from interdyn.errors import ConfigError, WeightsNotFoundError
from interdyn.models.hub import load_component
from interdyn.models.wan.transformer import WanTransformer3DControlModel

WAN_TI2V_REPO = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"

HOW_TO_GET_WAN = (
    f"Wan2.2 TI2V-5B is Apache-2.0: on a machine with internet access run `hf download {WAN_TI2V_REPO} "
    "--local-dir checkpoints/wan2.2-ti2v-5b` and pass that folder."
)

# The sampler Wan2.2 TI2V-5B ships with (scheduler/scheduler_config.json of the diffusers folder):
# UniPC on flow sigmas, shift 5.
WAN_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "solver_order": 2,
    "prediction_type": "flow_prediction",
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "disable_corrector": [],
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}

# Per-channel statistics of the Wan2.2 VAE's 48 latent channels (its vae/config.json).
WAN22_LATENTS_MEAN: list[float] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD: list[float] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

# The VAE geometry both presets share: 12 = 3 x 2 x 2 pixel channels after a 2x2 patchify, 48 latent
# channels, 3 spatial downsamplings (x8) after the patchify (x16 in all), 4 frames per latent frame
# after the first.
_VAE_GEOMETRY: dict[str, Any] = {
    "z_dim": 48,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "is_residual": True,
    "temperal_downsample": [False, True, True],
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": WAN22_LATENTS_MEAN,
    "latents_std": WAN22_LATENTS_STD,
}

# Full-size Wan2.2 TI2V-5B (random weights): for meta-device memory and FLOP analysis.
WAN22_TI2V_ARCHITECTURE: dict[str, Any] = {
    "transformer": {
        "patch_size": [1, 2, 2],
        "num_attention_heads": 24,
        "attention_head_dim": 128,
        "in_channels": 48,
        "out_channels": 48,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 14336,
        "num_layers": 30,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    },
    "vae": {
        **_VAE_GEOMETRY,
        "base_dim": 160,
        "decoder_base_dim": 256,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
    },
    "scheduler": WAN_SCHEDULER_CONFIG,
}

# The same classes, latent width (48), patch size and VAE compression (4 x 16 x 16) at a tiny width.
TINY_WAN_ARCHITECTURE: dict[str, Any] = {
    "transformer": {
        "patch_size": [1, 2, 2],
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 48,
        "out_channels": 48,
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 32,
        "num_layers": 4,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 32,
    },
    "vae": {
        **_VAE_GEOMETRY,
        "base_dim": 8,
        "decoder_base_dim": 8,
        "dim_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
    },
    "scheduler": WAN_SCHEDULER_CONFIG,
}

WAN_PRESETS = {"random:wan-tiny": TINY_WAN_ARCHITECTURE, "random:wan2.2-ti2v-5b": WAN22_TI2V_ARCHITECTURE}
_SCHEDULERS = {
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}

WanSource = str | dict[str, Any]
WanScheduler = UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler


@dataclass
class WanComponents:
    """The frozen parts of Wan2.2 TI2V used by InterDyn (no text encoder: prompts are cached embeddings)."""

    transformer: WanTransformer3DControlModel
    vae: AutoencoderKLWan
    scheduler: WanScheduler


def _scheduler_from_config(config: dict[str, Any]) -> WanScheduler:
    """UniPC (the shipped sampler) unless ``_class_name`` names FlowMatchEulerDiscreteScheduler."""
    config = dict(config)
    name = config.pop("_class_name", "UniPCMultistepScheduler")
    if name not in _SCHEDULERS:
        raise ConfigError(f"unknown Wan scheduler {name!r}; expected one of {sorted(_SCHEDULERS)}")
    if name == "UniPCMultistepScheduler":
        return UniPCMultistepScheduler(**{**WAN_SCHEDULER_CONFIG, **config})
    return FlowMatchEulerDiscreteScheduler(**{"shift": WAN_SCHEDULER_CONFIG["flow_shift"], **config})


def build_wan(config: dict[str, Any]) -> WanComponents:
    """Build Wan2.2 TI2V components with random weights from constructor-argument dicts (seeded by
    ``seed``; ``scheduler`` may name ``"_class_name": "FlowMatchEulerDiscreteScheduler"``). Build inside
    ``torch.device("meta")`` for the full-size architecture without allocating its weights."""
    unknown = set(config) - {"transformer", "vae", "scheduler", "seed"}
    if unknown:
        raise ConfigError(
            f"unknown Wan config entries {sorted(unknown)}; expected transformer, vae, scheduler, seed"
        )
    cfg = {k: copy.deepcopy(config.get(k, TINY_WAN_ARCHITECTURE[k])) for k in ("transformer", "vae")}
    if cfg["transformer"].get("in_channels") != cfg["vae"].get("z_dim"):
        raise ConfigError(
            f"transformer.in_channels ({cfg['transformer'].get('in_channels')}) must equal vae.z_dim "
            f"({cfg['vae'].get('z_dim')}): TI2V denoises the VAE latents directly"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config.get("seed", 0)))
            transformer = WanTransformer3DControlModel(**cfg["transformer"])
            vae = AutoencoderKLWan(**cfg["vae"])
    except TypeError as err:
        raise ConfigError(f"invalid Wan architecture config: {err}") from None
    with torch.device("cpu"):  # the scheduler's tables are real even when the models are built on meta
        scheduler = _scheduler_from_config(config.get("scheduler") or {})
    return WanComponents(transformer, vae, scheduler)


def _load_scheduler(path: str) -> WanScheduler:
    """The scheduler of a Wan folder, of the class its config names (UniPC for the shipped TI2V-5B)."""
    folder = Path(path) / "scheduler" / "scheduler_config.json"
    name = json.loads(folder.read_text()).get("_class_name") if folder.is_file() else None
    cls = _SCHEDULERS.get(name or "UniPCMultistepScheduler", UniPCMultistepScheduler)
    return load_component(
        cls, path, subfolder="scheduler", what="Wan scheduler", kind="wan", strict=False,
        marker="scheduler_config.json",
    )  # fmt: skip


def load_wan(path: str = WAN_TI2V_REPO, torch_dtype: torch.dtype | None = None) -> WanComponents:
    """Load Wan2.2 TI2V from a local diffusers folder or hub id; the transformer is loaded as
    :class:`WanTransformer3DControlModel` (same weights as the stock model). The VAE stays in float32
    whatever ``torch_dtype`` is (the pipeline encodes and decodes in the VAE's dtype)."""
    kw: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        transformer = load_component(
            WanTransformer3DControlModel,
            path,
            subfolder="transformer",
            what="Wan transformer",
            kind="wan",
            **kw,
        )
        vae = load_component(AutoencoderKLWan, path, subfolder="vae", what="Wan VAE", kind="wan")
        scheduler = _load_scheduler(path)
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError(f"{err} {HOW_TO_GET_WAN}") from None
    _check_ti2v(transformer, vae)
    return WanComponents(transformer, vae, scheduler)


def _check_ti2v(transformer: WanTransformer3DControlModel, vae: AutoencoderKLWan) -> None:
    """Refuse Wan models that are not TI2V-shaped (Wan2.1 I2V concatenates a mask and an image latent on the
    channel axis and cross-attends to CLIP: a different conditioning this slice does not implement)."""
    if transformer.config.in_channels != vae.config.z_dim or transformer.config.image_dim is not None:
        raise ConfigError(
            f"this Wan transformer takes {transformer.config.in_channels} input channels for a "
            f"{vae.config.z_dim}-channel VAE (image_dim {transformer.config.image_dim}); interdyn supports "
            "TI2V-style models (Wan2.2 TI2V-5B), whose input is the VAE latent itself"
        )


def get_wan(source: WanSource, torch_dtype: torch.dtype | None = None) -> WanComponents:
    """Resolve any Wan source (path / hub id, preset name, or config dict) to components; ``torch_dtype``
    applies to the transformer (the VAE stays float32)."""
    if isinstance(source, dict):
        components = build_wan(source)
    elif source in WAN_PRESETS:
        components = build_wan(WAN_PRESETS[source])
    elif isinstance(source, str) and source.startswith("random:"):
        raise ConfigError(f"unknown Wan preset {source!r}; available: {sorted(WAN_PRESETS)}")
    else:
        return load_wan(source, torch_dtype=torch_dtype)
    if torch_dtype is not None and torch_dtype != torch.float32:
        components.transformer.to(torch_dtype)
    return components


def get_wan_vae(source: WanSource) -> AutoencoderKLWan:
    """Only the VAE of a Wan source, in float32 (the latent cache needs no transformer): a folder's or hub id's
    ``vae/``, or the VAE of a preset or architecture dict (built whole: the same seeded weights as
    :func:`get_wan` gives)."""
    if isinstance(source, dict) or (isinstance(source, str) and source.startswith("random:")):
        return get_wan(source).vae
    try:
        return load_component(AutoencoderKLWan, source, subfolder="vae", what="Wan VAE", kind="wan")
    except WeightsNotFoundError as err:
        raise WeightsNotFoundError(f"{err} {HOW_TO_GET_WAN}") from None


def save_wan(components: WanComponents, folder: str | Path) -> None:
    """Write components in the layout of the diffusers Wan2.2 TI2V folder (``transformer/ vae/ scheduler/``
    and a ``model_index.json`` without text encoder), so that diffusers' ``WanImageToVideoPipeline`` loads it
    too, given ``text_encoder=None, tokenizer=None`` (the transformer config names the stock class: the
    weights are the stock model's)."""
    folder = Path(folder)
    components.transformer.save_pretrained(folder / "transformer")
    components.vae.save_pretrained(folder / "vae")
    components.scheduler.save_pretrained(folder / "scheduler")
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["_class_name"] = "WanTransformer3DModel"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    index = {
        "_class_name": "WanImageToVideoPipeline",
        "expand_timesteps": True,
        "boundary_ratio": None,
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", type(components.scheduler).__name__],
        "text_encoder": [None, None],
        "tokenizer": [None, None],
        "image_encoder": [None, None],
        "image_processor": [None, None],
        "transformer_2": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
