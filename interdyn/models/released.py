"""Loading control-branch weights, including the released InterDyn checkpoint.

The released weights were trained with a UNet that adds the branch residuals inside its down-block
loop, so skip ``i`` receives its residual once for every down block still to run (for SVD:
multiplicities ``(4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1)``, mid block 1). This project's UNet adds each
residual once. Because each residual comes out of a 1x1 convolution (linear in its weight and bias),
scaling ``controlnet_down_blocks.i`` by its multiplicity at import time reproduces the released
behaviour exactly under the single addition.

Folders written by this project carry ``residual_addition: "single"`` in their ``config.json``; a
branch without that field is treated as released-style and folded on load. The rule
(:func:`is_released_config`) is the same for every loader (:func:`load_controlnet`,
``InterDynPipeline.from_pretrained``) and for local folders and hub ids alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError

from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.hub import (
    check_local_folder,
    describe_missing,
    failure_reason,
    load_component,
    looks_like_local_path,
)

RELEASED_REPO = "rickakkerman/InterDyn"
RELEASED_SUBFOLDER = "controlnet"
CONVENTION_KEY = "residual_addition"
_WHAT = "InterDyn control branch"


def released_multiplicities(controlnet: ControlNetSDVModel) -> list[int]:
    """How many times the released UNet added each skip residual: a skip of down block ``b``
    (``conv_in`` counted in block 0) is added once per block still to run, ``num_blocks - b`` times."""
    n_blocks = len(controlnet.down_blocks)
    mults: list[int] = []
    for b, count in enumerate(controlnet.skips_per_block):
        mults += [n_blocks - b] * count
    return mults


@torch.no_grad()
def fold_released_residuals(controlnet: ControlNetSDVModel) -> ControlNetSDVModel:
    """Scale each skip's zero conv by its released multiplicity, in place, so that a single addition
    reproduces the released cumulative one."""
    for conv, mult in zip(
        controlnet.controlnet_down_blocks, released_multiplicities(controlnet), strict=True
    ):
        conv.weight.mul_(mult)
        conv.bias.mul_(mult)
    return controlnet


def _read_raw_config(path: str, subfolder: str | None, **hub_kwargs: object) -> dict:
    """config.json exactly as stored (diffusers fills absent fields with defaults, hiding the marker)."""
    if looks_like_local_path(path):
        folder = check_local_folder(path, subfolder, _WHAT, "controlnet")
        try:
            return json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as err:
            raise describe_missing(
                path, subfolder, _WHAT, "controlnet", f"its config.json is not valid JSON ({err})."
            ) from None
    try:
        return dict(ControlNetSDVModel.load_config(path, subfolder=subfolder, **hub_kwargs))
    except (OSError, HFValidationError) as err:
        raise describe_missing(
            path, subfolder, _WHAT, "controlnet", failure_reason(err, local=False)
        ) from None


def is_released_config(raw: dict) -> bool:
    """The one rule: a branch config without ``residual_addition: "single"`` holds released-style weights."""
    return raw.get(CONVENTION_KEY) != "single"


def is_released(path: str, subfolder: str | None = None, **hub_kwargs: object) -> bool:
    """Whether the branch at ``path`` (a local folder or a hub id; ``subfolder`` e.g. ``"controlnet"``) holds
    released-style weights, by :func:`is_released_config` on its stored ``config.json``. ``hub_kwargs`` (such as
    ``cache_dir`` or ``revision``) are passed to the hub client for hub ids."""
    return is_released_config(_read_raw_config(path, subfolder, **hub_kwargs))


def load_controlnet(
    path: str,
    subfolder: str | None = None,
    released: bool | None = None,
    torch_dtype: torch.dtype | None = None,
) -> ControlNetSDVModel:
    """Load a control branch from a local folder or hub id, strictly (every tensor must match).

    Args:
        path: a folder written by ``save_pretrained``, the released repository (``rickakkerman/InterDyn``)
            or a download of it.
        subfolder: e.g. ``"controlnet"``. When ``None``, the released repository's ``controlnet/``
            subfolder is used if ``path`` has no ``config.json`` of its own.
        released: force (True) or skip (False) the conversion of released-style weights; by default
            decided by the absence of ``residual_addition`` in ``config.json``.
        torch_dtype: dtype of the loaded weights.
    """
    if subfolder is None:
        local = looks_like_local_path(path)
        root = Path(path).expanduser()
        if (not local and path == RELEASED_REPO) or (
            local
            and not (root / "config.json").is_file()
            and (root / RELEASED_SUBFOLDER / "config.json").is_file()
        ):
            subfolder = RELEASED_SUBFOLDER
    raw = _read_raw_config(path, subfolder)
    model = load_component(
        ControlNetSDVModel, path, subfolder=subfolder, what=_WHAT, kind="controlnet", torch_dtype=torch_dtype
    )
    if released is None:
        released = is_released_config(raw)
    if released:
        fold_released_residuals(model)
    return model
