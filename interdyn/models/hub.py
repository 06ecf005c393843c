"""Loading pretrained components from a local folder or a hub id, with one-paragraph errors.

Every ``from_pretrained`` call of the project goes through :func:`load_component`, which turns the hub
client's and diffusers' errors (missing folders, offline mode, unknown repositories) into a
:class:`~interdyn.errors.WeightsNotFoundError` that names what is missing and how to get it, and which
refuses checkpoints whose tensors do not match the model exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub.errors import HFValidationError

from interdyn.errors import WeightsMismatchError, WeightsNotFoundError

T = TypeVar("T")

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid"

_HOW_TO_GET = {
    "svd": (
        "Stable Video Diffusion is gated: accept its licence on the Hugging Face hub, then on a machine "
        f"with internet access run `hf download {SVD_REPO} --local-dir checkpoints/svd` and pass that "
        "folder (`--model.svd checkpoints/svd` in training, `--svd checkpoints/svd` for `interdyn generate`)."
    ),
    "controlnet": (
        "The released InterDyn branch is the `controlnet/` folder of the hub repository rickakkerman/InterDyn "
        "(`hf download rickakkerman/InterDyn --local-dir checkpoints/interdyn`); a branch you trained "
        "is written by `interdyn export` or `save_pretrained`."
    ),
}


# The project's checkout (the folder holding configs/ and weights/), where the shipped weights live.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_local_path(path: str) -> str:
    """A local path as it will be read: a relative path that exists from the current directory as it is;
    one that does not, but exists in the project's checkout (the shipped ``weights/world/...`` that
    configs/demo.yaml names), from there; anything else as given (``~`` expanded)."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists():
        return str(p)
    shipped = PROJECT_ROOT / p
    if (PROJECT_ROOT / "configs").is_dir() and shipped.exists():
        return str(shipped)
    return str(p)


def looks_like_local_path(path: str) -> bool:
    """True for strings that can only be filesystem paths (not ``org/name`` hub ids)."""
    p = str(path)
    return (
        os.path.isabs(p)
        or p.startswith((".", "~"))
        or p.count("/") > 1
        or os.sep != "/"
        and os.sep in p
        or Path(resolve_local_path(p)).exists()
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def failure_reason(err: Exception, local: bool) -> str:
    """Why a from_pretrained call failed, in one sentence."""
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    if local:
        return f"the files are unreadable or incomplete ({first_line})."
    if _offline():
        return "it is not a local folder and HF_HUB_OFFLINE=1 forbids downloads (nor is it in the local hub cache)."
    return f"it is not a local folder and the hub could not provide it ({first_line})."


def describe_missing(
    path: str, subfolder: str | None, what: str, kind: str, reason: str
) -> WeightsNotFoundError:
    """Build the one-paragraph error for weights that cannot be loaded."""
    where = f"'{path}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
    hint = _HOW_TO_GET.get(kind, "")
    return WeightsNotFoundError(f"Could not load the {what} from {where}: {reason} {hint}".strip())


def check_local_folder(
    path: str, subfolder: str | None, what: str, kind: str, marker: str = "config.json"
) -> Path:
    """Return the folder holding ``marker`` (a relative ``path`` resolved by :func:`resolve_local_path`), or
    raise a WeightsNotFoundError saying what is missing."""
    root = Path(resolve_local_path(path))
    if not root.exists() and not root.is_absolute():  # not a download problem: no hint on getting weights
        reason = (
            f"that path does not exist; a relative path is resolved against the current directory "
            f"({os.getcwd()}): run the command from the folder it is relative to, or give an absolute path."
        )
        raise describe_missing(path, subfolder, what, "", reason)
    if not root.exists():
        raise describe_missing(path, subfolder, what, kind, "that path does not exist.")
    folder = root / subfolder if subfolder else root
    if not (folder / marker).is_file():
        present = sorted(p.name for p in root.iterdir())[:12] if root.is_dir() else []
        raise describe_missing(
            path,
            subfolder,
            what,
            kind,
            f"'{folder / marker}' is missing (the folder holds: {', '.join(present) or 'nothing'}).",
        )
    return folder


def load_component(
    cls: type[T],
    path: str,
    subfolder: str | None = None,
    what: str = "weights",
    kind: str = "svd",
    strict: bool = True,
    marker: str = "config.json",
    **kwargs: Any,
) -> T:
    """``cls.from_pretrained(path, subfolder=...)`` with clear errors.

    Args:
        cls: a diffusers/transformers class with ``from_pretrained``.
        path: a local folder or a hub id.
        subfolder: component subfolder (``"unet"``, ``"vae"``, ...).
        what: human name used in error messages.
        kind: which download hint to give (``"svd"`` or ``"controlnet"``).
        strict: also fail when the checkpoint has missing, unexpected or mis-shaped tensors.
        marker: the file a local component folder must hold (``scheduler_config.json`` for schedulers).
        kwargs: passed to ``from_pretrained`` (``torch_dtype``, ``variant``, ...).
    """
    local = looks_like_local_path(path)
    if local:
        check_local_folder(path, subfolder, what, kind, marker)
        path = resolve_local_path(path)
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    if strict:
        kwargs["output_loading_info"] = True
    try:
        result = cls.from_pretrained(path, **kwargs)  # type: ignore[attr-defined]
    except (OSError, HFValidationError) as err:
        raise describe_missing(path, subfolder, what, kind, failure_reason(err, local)) from None
    except ValueError as err:  # diffusers reports tensors of the wrong shape this way
        if "shape" not in str(err):
            raise
        raise WeightsMismatchError(
            f"The {what} at '{path}' does not match {cls.__name__}'s architecture: {str(err).splitlines()[0][:300]}"
        ) from None
    if not strict:
        return result
    model, info = result
    problems = {
        k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        detail = "; ".join(f"{k}: {list(v)[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise WeightsMismatchError(
            f"The {what} at '{path}'{f' (subfolder {subfolder!r})' if subfolder else ''} does not match "
            f"{cls.__name__}'s architecture ({detail}). Check that the folder belongs to this model and "
            "that its config.json was not edited."
        )
    return model
