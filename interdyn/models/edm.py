"""EDM training objective as used for SVD and by the paper (sigma_data = 1, v-style preconditioning).

- ``log sigma ~ N(p_mean, p_std^2)``
- ``c_in = 1/sqrt(sigma^2+1)``, ``c_noise = 0.25 ln sigma``, ``c_skip = 1/(sigma^2+1)``,
  ``c_out = -sigma/sqrt(sigma^2+1)``
- ``D = c_skip * x_noisy + c_out * F(c_in * x_noisy, c_noise)``
- ``loss = mean(w(sigma) * (D - x0)^2)`` with ``w = (sigma^2+1)/sigma^2``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preconditioning:
    """EDM preconditioning coefficients, each broadcastable against the latents."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def sample_sigmas(
    batch_size: int,
    p_mean: float = 0.7,
    p_std: float = 1.6,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``(batch_size,)`` training noise levels with ``log sigma ~ N(p_mean, p_std^2)``."""
    gen_device = generator.device if generator is not None else device
    normal = torch.randn(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    return torch.exp(p_mean + p_std * normal).to(device)


def precondition(sigma: torch.Tensor) -> Preconditioning:
    """Coefficients for noise levels ``sigma`` (any shape); ``c_noise`` keeps ``sigma``'s shape, the
    others too, so reshape sigma to broadcast before calling (e.g. ``(B, 1, 1, 1, 1)``)."""
    var = sigma**2 + 1.0
    return Preconditioning(
        c_skip=1.0 / var,
        c_out=-sigma / var.sqrt(),
        c_in=1.0 / var.sqrt(),
        c_noise=0.25 * sigma.log(),
    )


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM weight ``(sigma^2 + 1) / sigma^2`` (sigma_data = 1)."""
    return (sigma**2 + 1.0) / sigma**2


def edm_loss(
    denoised: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(w(sigma) * (denoised - target)^2)``; ``sigma`` is ``(B,)`` and broadcast per sample.

    With ``weights`` (positive, broadcastable against ``target``, e.g. :func:`motion_weights`), each
    sample's mean becomes its weighted mean ``sum(weights * w(sigma) * err^2) / sum(weights)``, and the loss
    is the mean over samples: the same value as without weights when they are constant (the loss keeps
    its scale, learning rates carry over), and per sample, so equal micro-batches of gradient
    accumulation still average to the whole batch's loss.
    """
    w = loss_weight(sigma.float()).view(-1, *([1] * (target.ndim - 1)))
    err = w * (denoised.float() - target.float()) ** 2
    if weights is None:
        return err.mean()
    weights = weights.float().expand_as(err)
    dims = tuple(range(1, err.ndim))
    return ((weights * err).sum(dims) / weights.sum(dims)).mean()


def motion_weights(latents: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights ``(B, T, 1, h, w)`` that favour what moves: ``1 + strength * a / max(a)``,
    where ``a`` is the distance (over channels) of each frame's clean latent ``(B, T, C, h, w)`` from the
    first frame's, and ``max`` is taken per sample (a still clip gets weight 1 everywhere).

    A moved object changes both where it was and where it is, and in a scene that is mostly still
    background these few positions are what a driver's control decides; the plain mean spends almost all
    of its gradient on the background instead. ``strength = 0`` gives the plain loss.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, T, C, h, w), got shape {tuple(latents.shape)}")
    moved = (latents.float() - latents[:, :1].float()).norm(dim=2, keepdim=True)
    peak = moved.amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
    return 1.0 + strength * moved / peak


def unet_input(
    noisy: torch.Tensor, sigma: torch.Tensor, image_latents: torch.Tensor
) -> tuple[Preconditioning, torch.Tensor, torch.Tensor]:
    """SVD's UNet input for noisy latents ``(B, T, C, h, w)`` at noise levels ``sigma`` ``(B,)``: the
    preconditioning, ``c_in * noisy`` with the image latent ``(B, C, h, w)`` concatenated on the channels of
    every frame, and the flat ``c_noise`` ``(B,)``."""
    b, t = noisy.shape[:2]
    pc = precondition(sigma.view(b, 1, 1, 1, 1))
    model_in = torch.cat([pc.c_in * noisy, image_latents.unsqueeze(1).expand(-1, t, -1, -1, -1)], dim=2)
    return pc, model_in, pc.c_noise.flatten()


def denoised(pc: Preconditioning, noisy: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
    """``D = c_skip * x_noisy + c_out * F``."""
    return pc.c_skip * noisy + pc.c_out * model_out
