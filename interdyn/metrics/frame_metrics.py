"""Per-frame image metrics (SSIM, PSNR, LPIPS) averaged per video.

Frames are ``(T, 3, H, W)`` in ``[0, 1]``. LPIPS needs its backbone's ImageNet weights, which cannot
be downloaded offline: give the ``.pth`` file (``lpips_backbone``) or put it in torch's hub cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from interdyn.errors import WeightsNotFoundError

# torchvision's file names for the LPIPS backbones (what torch.hub caches them as).
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def psnr_per_video(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over frames of the per-frame PSNR (data range 1)."""
    values = [
        peak_signal_noise_ratio(f[None], r[None], data_range=1.0) for f, r in zip(fake, real, strict=True)
    ]
    return float(torch.stack(values).mean())


def ssim_per_video(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over frames of the per-frame SSIM (Gaussian window 11, data range 1)."""
    values = structural_similarity_index_measure(fake.float(), real.float(), data_range=1.0, reduction="none")
    return float(values.mean())


def build_lpips(net: str = "alex", backbone: str | None = None) -> torch.nn.Module:
    """torchmetrics' LPIPS with its backbone weights taken from ``backbone`` or torch's hub cache. A missing
    file is a clear error naming it (offline, before any download is attempted; online, after
    torchvision's download failed)."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    filename = LPIPS_BACKBONE_FILES[net]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "INTERDYN_OFFLINE"
    )
    if backbone is None and not cached.is_file() and offline:
        raise _missing_backbone(net, filename, cached)
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if backbone is not None:
            if not Path(backbone).is_file():
                raise WeightsNotFoundError(f"lpips_backbone '{backbone}' does not exist")
            (Path(tmp) / "checkpoints").mkdir()
            os.symlink(Path(backbone).resolve(), Path(tmp) / "checkpoints" / filename)
            torch.hub.set_dir(tmp)
        try:
            return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).eval()
        except (OSError, RuntimeError) as err:  # the download torchvision attempts failed
            raise _missing_backbone(net, filename, cached, err) from None
        finally:
            torch.hub.set_dir(previous)


def _missing_backbone(
    net: str, filename: str, cached: Path, err: Exception | None = None
) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"LPIPS needs the ImageNet weights of its {net} backbone, '{filename}', which are not in torch's hub "
        f"cache ({cached.parent}). Download them on a machine with internet access (torchvision fetches them "
        f"on first use of torchvision.models.{ {'alex': 'alexnet', 'vgg': 'vgg16', 'squeeze': 'squeezenet1_1'}[net] }"
        "(weights='DEFAULT')) and copy the file there or pass its path as lpips_backbone."
        + (f" ({type(err).__name__}: {str(err)[:200]})" if err else "")
    )


@torch.no_grad()
def lpips_per_video(lpips: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over frames of LPIPS (inputs in [0, 1])."""
    lpips.reset()
    values = [
        lpips(f[None].float().clamp(0, 1), r[None].float().clamp(0, 1))
        for f, r in zip(fake, real, strict=True)
    ]
    return float(torch.stack(values).mean())
