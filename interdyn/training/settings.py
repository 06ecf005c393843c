"""The training settings that travel as one object each: how the EDM objective draws its inputs
(:class:`ObjectiveSettings`) and what trades compute for memory or speed (:class:`MemorySettings`).
Sampling has its own owner, :class:`~interdyn.models.sampling.SamplingSettings`.

A module takes each as a whole (``objective: ObjectiveSettings``, ...), so that a new setting is added in
one place; configs write them as nested groups (``model: objective: {p_mean: 0.7}``). Checkpoints written
before the groups existed hold the same settings as flat hyper-parameters: :func:`nest_settings` puts
them back into their groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, TypeVar

import torch

from interdyn.errors import ConfigError
from interdyn.models.sampling import SamplingSettings

# The dtype names that settings and command-line options accept.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The training noise levels: log sigma ~ N(P_MEAN, P_STD^2) (SVD's and the paper's).
P_MEAN = 0.7
P_STD = 1.6


@dataclass(frozen=True)
class ObjectiveSettings:
    """How the EDM training loss draws its inputs; the defaults are the paper's.

    Args:
        image_drop_prob: probability of dropping a sample's image conditioning (classifier-free guidance).
        p_mean, p_std: ``log sigma ~ N(p_mean, p_std^2)`` during training.
        motion_loss_weight: weight the training loss towards the latent positions that change over the
            clip: ``1 + motion_loss_weight`` at the largest change
            (:func:`~interdyn.models.edm.motion_weights`); 0 is the paper's plain EDM loss. Validation and
            test losses are always the plain loss, so runs stay comparable.
        val_sigmas: fixed noise levels of the validation loss, cycled over the samples of each batch.
        val_seed: seed of the validation noise (the validation loss is deterministic).
        context_frames_max: 0 trains a plain branch; ``K > 0`` trains a *context branch* (docs/long.md): the
            branch also gets each clip's first ``k`` clean latents and their known mask, ``k`` drawn per
            sample from 0 to ``K`` (set it to the sampling overlap, 4 by default); a plain branch to start
            from is made one with new channels at zero, so training starts from its outputs.
    """

    image_drop_prob: float = 0.05
    p_mean: float = P_MEAN
    p_std: float = P_STD
    motion_loss_weight: float = 0.0
    val_sigmas: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0, 20.0)
    val_seed: int = 0
    context_frames_max: int = 0

    def __post_init__(self) -> None:
        frames = self.context_frames_max
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ConfigError(f"context_frames_max must be a whole number of frames >= 0, got {frames!r}")
        if not 0.0 <= self.image_drop_prob <= 1.0:
            raise ConfigError(f"image_drop_prob must lie in [0, 1], got {self.image_drop_prob}")
        if self.motion_loss_weight < 0:
            raise ConfigError(f"motion_loss_weight must be >= 0, got {self.motion_loss_weight}")
        if not self.val_sigmas or min(self.val_sigmas) <= 0:
            raise ConfigError(
                f"val_sigmas must be a non-empty list of positive noise levels, got {self.val_sigmas}"
            )
        object.__setattr__(self, "val_sigmas", tuple(float(s) for s in self.val_sigmas))


@dataclass(frozen=True)
class MemorySettings:
    """What trades compute for memory or speed; none changes what is learned beyond rounding.

    Args:
        frozen_dtype: storage dtype of the frozen UNet, VAE and CLIP (``float32``, ``bfloat16``, ``float16``).
        gradient_checkpointing: recompute the branch's block activations in the backward pass.
        unet_gradient_checkpointing: the same for the frozen UNet (the loss back-propagates through its
            decoder into the residuals, so its activations are kept unless this is on).
        fine_checkpointing: with the two switches above, also recompute each whole spatio-temporal
            transformer layer (diffusers recomputes only its spatial block): far less activation memory for
            one more forward of those layers per step.
        offload_encoders: keep the VAE and CLIP image encoder in host memory while training on cached
            conditioning (the data's ``cached_conditioning: true``); they move to the device for
            validation, testing and sampling, and back afterwards.
        vae_chunk_size: frames per VAE call when encoding.
        compile: ``torch.compile`` the branch and the UNet (the first steps are slow while it compiles); a
            dict gives ``torch.compile`` arguments, e.g. ``{mode: max-autotune}``.
        fused_optimizer: fused Adam/AdamW kernels; ``None`` uses them on CUDA.
    """

    frozen_dtype: str = "float32"
    gradient_checkpointing: bool = False
    unet_gradient_checkpointing: bool = False
    fine_checkpointing: bool = False
    offload_encoders: bool = False
    vae_chunk_size: int = 16
    compile: bool | dict[str, Any] = False
    fused_optimizer: bool | None = None

    def __post_init__(self) -> None:
        if self.frozen_dtype not in DTYPES:
            raise ConfigError(f"frozen_dtype must be one of {sorted(DTYPES)}, got {self.frozen_dtype!r}")
        if self.vae_chunk_size < 1:
            raise ConfigError(f"vae_chunk_size must be >= 1, got {self.vae_chunk_size}")


DEFAULT_OBJECTIVE = ObjectiveSettings()
DEFAULT_MEMORY = MemorySettings()

# The settings groups of the training modules: argument name -> its class.
GROUPS: dict[str, type] = {
    "objective": ObjectiveSettings,
    "sampling": SamplingSettings,
    "memory": MemorySettings,
}
Settings = TypeVar("Settings")


def as_settings(cls: type[Settings], value: Settings | Mapping[str, Any] | None) -> Settings:
    """``value`` as a ``cls``: itself, the defaults for ``None``, or built from a mapping (a config group or
    a checkpoint's hyper-parameters), with one sentence for a name ``cls`` does not have."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if is_dataclass(value):
        value = asdict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected {cls.__name__} settings (a mapping), got {type(value).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {cls.__name__}: {err}") from None


def settings_dict(value: Any) -> dict[str, Any]:
    """A settings object as plain values (what checkpoints and logs store)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(value).items()}


def nest_settings(flat: Mapping[str, Any], groups: Mapping[str, type] = GROUPS) -> dict[str, Any]:
    """Hyper-parameters with the settings of ``groups`` given flat (``num_inference_steps: 4``, as written
    before the groups existed) moved into their groups (``sampling: {num_inference_steps: 4}``); values
    already nested are kept, and a group given whole wins over its flat names."""
    out = dict(flat)
    for group, cls in groups.items():
        moved = {f.name: out.pop(f.name) for f in fields(cls) if f.name in out}
        current = out.get(group)
        if is_dataclass(current):
            current = asdict(current)
        if moved or current is not None:
            out[group] = {**moved, **(current or {})}
    return out
