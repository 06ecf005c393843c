"""The training objective of a flow-matching backbone (Wan2.2 TI2V), beside the EDM objective of SVD.

Rectified flow, as Wan is trained:

- a noise level ``sigma`` in (0, 1) per sample: ``u`` uniform (or logit-normal), then the backbone's
  timestep shift ``sigma = s u / (1 + (s - 1) u)`` (``s = 5`` for TI2V-5B: more weight on high noise);
- ``x_t = (1 - sigma) x0 + sigma * noise``, the transformer sees timestep ``1000 sigma``;
- the target is the velocity ``noise - x0``, the loss its mean squared error.

As in TI2V, the first latent frame of the input is the clean conditioning image latent (timestep 0 on its
tokens), and it is left out of the loss. With a branch (``controlnet``) its residuals for ``control`` are
added to the frozen transformer's hidden states. No Lightning here: the module that trains the branch
calls :meth:`FlowMatchingObjective.compute_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interdyn.models.wan.controlnet import WanControlNetModel
from interdyn.models.wan.ti2v import predict_flow, token_timesteps, with_first_frame
from interdyn.models.wan.transformer import WanTransformer3DControlModel

TIMESTEP_SAMPLING = ("uniform", "logit_normal")


@dataclass(frozen=True)
class FlowMatchingSettings:
    """How noise levels are drawn (defaults: Wan2.2 TI2V-5B's shift 5 on a uniform draw).

    Attributes:
        shift: the timestep shift ``s`` (1: no shift).
        num_train_timesteps: the transformer's timestep scale (``timestep = sigma * num_train_timesteps``).
        timestep_sampling: ``"uniform"`` or ``"logit_normal"`` (``u = sigmoid(N(logit_mean, logit_std^2))``).
        logit_mean, logit_std: the logit-normal draw's parameters.
        conditioning_scale: multiplies the branch residuals.
    """

    shift: float = 5.0
    num_train_timesteps: int = 1000
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {self.timestep_sampling!r}"
            )
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift: ``s u / (1 + (s - 1) u)`` (identity for ``s = 1``)."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(
    batch: int,
    settings: FlowMatchingSettings,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``batch`` noise levels in (0, 1), float32, drawn on the generator's device and moved to ``device``."""
    gen_device = generator.device if generator is not None else torch.device(device)
    if settings.timestep_sampling == "uniform":
        u = torch.rand(batch, generator=generator, device=gen_device)
    else:
        normal = torch.randn(batch, generator=generator, device=gen_device)
        u = torch.sigmoid(settings.logit_mean + settings.logit_std * normal)
    return shift_sigmas(u, settings.shift).to(device, torch.float32)


@dataclass
class FlowLoss:
    """One batch's loss and the draws behind it (for logging and tests)."""

    loss: torch.Tensor
    sigma: torch.Tensor
    per_sample: torch.Tensor


class FlowMatchingObjective:
    """Flow-matching loss of a Wan TI2V transformer, with InterDyn's branch when there is one."""

    def __init__(self, settings: FlowMatchingSettings | None = None) -> None:
        self.settings = settings or FlowMatchingSettings()

    def compute_loss(
        self,
        transformer: WanTransformer3DControlModel,
        latents: torch.Tensor,
        image_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        controlnet: WanControlNetModel | None = None,
        control: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sigma: torch.Tensor | None = None,
    ) -> FlowLoss:
        """The loss of one batch.

        Args:
            transformer: the frozen Wan transformer.
            latents: the clips' normalised latents ``(B, C, F, h, w)`` (the target x0).
            image_latents: the first frames' normalised latents ``(B, C, 1, h, w)`` (the conditioning).
            prompt_embeds: the fixed prompt embedding ``(1 or B, S, text_dim)``.
            controlnet: the branch (None: the backbone's own objective; ``control`` is then unused).
            control: driver masks ``(B, T, C, H, W)`` in ``[-1, 1]``, ``T = 1 + 4 (F - 1)``.
            generator: seeds the noise levels and the noise (the same seed gives the same loss).
            sigma: fixed noise levels ``(B,)`` instead of drawn ones.
        """
        if latents.ndim != 5 or latents.shape[2] < 2:
            raise ValueError(f"latents must be (B, C, F, h, w) with F >= 2, got {tuple(latents.shape)}")
        if controlnet is not None and control is None:
            raise ValueError("compute_loss needs the control masks of the branch")
        batch = latents.shape[0]
        x0 = latents.float()
        if sigma is None:
            sigma = sample_sigmas(batch, self.settings, generator, x0.device)
        sigma = sigma.to(x0.device, torch.float32)
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device)
        s = sigma.view(batch, 1, 1, 1, 1)
        noisy = with_first_frame((1 - s) * x0 + s * noise, image_latents.float())
        timestep = token_timesteps(
            sigma * self.settings.num_train_timesteps, noisy, transformer.config.patch_size
        )
        prompt = prompt_embeds.expand(batch, -1, -1)
        pred = predict_flow(
            transformer,
            noisy,
            timestep,
            prompt,
            controlnet,
            control=control,
            conditioning_scale=self.settings.conditioning_scale,
        ).float()
        error = (pred - (noise - x0))[:, :, 1:].square()
        per_sample = error.flatten(1).mean(dim=1)
        return FlowLoss(per_sample.mean(), sigma, per_sample)
