"""The settings groups of :class:`~interdyn.training.wan_module.InterDynWanModule`, the Wan2.2 TI2V backbone's
training module. They carry the same group and field names as the SVD module's where the meaning is the same
(``objective.val_sigmas``, ``sampling.num_inference_steps``, ``memory.frozen_dtype``...), so that a command-line
option reads alike for both backbones; what differs is the objective (flow matching, not EDM) and the sampler
(the backbone's own, UniPC on flow sigmas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interdyn.errors import ConfigError
from interdyn.training.flow_objective import FlowMatchingSettings
from interdyn.training.settings import DTYPES, as_settings, settings_dict


@dataclass(frozen=True)
class WanObjectiveSettings(FlowMatchingSettings):
    """How the flow-matching loss draws its noise levels (:class:`FlowMatchingSettings`: ``shift`` 5,
    ``timestep_sampling`` uniform, ``conditioning_scale`` of the branch in training), and the validation
    loss's fixed draws.

    Args:
        val_sigmas: fixed noise levels in (0, 1) of the validation and test loss, cycled over the samples.
        val_seed: seed of the validation noise (the validation loss is deterministic).
    """

    val_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    val_seed: int = 0

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not self.val_sigmas or not all(0 < s < 1 for s in self.val_sigmas):
            raise ConfigError(f"val_sigmas must be noise levels in (0, 1), got {self.val_sigmas}")
        object.__setattr__(self, "val_sigmas", tuple(float(s) for s in self.val_sigmas))


@dataclass(frozen=True)
class WanSamplingSettings:
    """How videos are sampled (``predict``, ``test``'s video errors, the logged videos).

    Args:
        num_inference_steps: steps of the backbone's own sampler (the scheduler its folder ships).
        conditioning_scale: multiplies the branch residuals (0: the frozen Wan alone).
        guidance_scale: classifier-free guidance on the prompt: each step's prediction moves away from the
            one with the module's ``negative_prompt_embeds`` by this factor (Wan2.2's own pipelines use 5);
            1 (the default): no guidance, one transformer call per step instead of two.
    """

    num_inference_steps: int = 50
    conditioning_scale: float = 1.0
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not self.guidance_scale >= 1.0:
            raise ConfigError(
                f"guidance_scale must be >= 1 (1: no prompt guidance), got {self.guidance_scale}"
            )

    def as_kwargs(self) -> dict[str, Any]:
        """The pipeline's keyword arguments."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "conditioning_scale": self.conditioning_scale,
            "guidance_scale": self.guidance_scale,
        }


@dataclass(frozen=True)
class WanMemorySettings:
    """What trades compute for memory or speed.

    Args:
        frozen_dtype: storage dtype of the frozen transformer (``bfloat16`` at full size); the VAE stays in
            float32 and the branch's weights too (mixed precision comes from the trainer's ``precision``).
        gradient_checkpointing: recompute the branch's block activations in the backward pass.
        transformer_gradient_checkpointing: the same for the frozen transformer (the loss back-propagates
            through its blocks after the first branch residual).
        offload_encoders: keep the VAE in host memory while training on cached latents (the data's
            ``cached_conditioning: true``, after ``make latents``); it moves to the device for validation,
            testing and sampling, and back afterwards.
        fused_optimizer: fused Adam/AdamW kernels; ``None`` uses them on CUDA.
    """

    frozen_dtype: str = "float32"
    gradient_checkpointing: bool = False
    transformer_gradient_checkpointing: bool = False
    offload_encoders: bool = False
    fused_optimizer: bool | None = None

    def __post_init__(self) -> None:
        if self.frozen_dtype not in DTYPES:
            raise ConfigError(f"frozen_dtype must be one of {sorted(DTYPES)}, got {self.frozen_dtype!r}")


DEFAULT_WAN_OBJECTIVE = WanObjectiveSettings()
DEFAULT_WAN_SAMPLING = WanSamplingSettings()
DEFAULT_WAN_MEMORY = WanMemorySettings()

# The Wan module's settings groups: argument name -> its class.
WAN_GROUPS: dict[str, type] = {
    "objective": WanObjectiveSettings,
    "sampling": WanSamplingSettings,
    "memory": WanMemorySettings,
}


def store_wan_settings(hparams: dict[str, Any]) -> None:
    """Each settings group of ``hparams`` (an object, a config's mapping or None) as checked plain values,
    which checkpoints store without pickling a class."""
    for group, cls in WAN_GROUPS.items():
        if group in hparams:
            hparams[group] = settings_dict(as_settings(cls, hparams[group]))
