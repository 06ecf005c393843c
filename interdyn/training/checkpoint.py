"""Reading training checkpoints, and the control branch inside them: the one weights-only loader of the
project (``interdyn fit``'s resume and ``test`` through :mod:`interdyn.training.checkpoint_io`,
``interdyn export``, ``interdyn generate`` and the latent cache), and how the training modules
(:class:`~interdyn.training.module.InterDynModule`, and the Wan backbone's with its branch class) write the
branch.

Every load, local file, remote file system or URL, unpickles weights-only (tensors and plain values), so
that a checkpoint can never run code: a pickle can call any importable function while it is read;
``torch.load(weights_only=True)`` only rebuilds tensors, containers, numbers and strings. Tensors are
always mapped to the CPU, and a local file is memory-mapped.

A checkpoint holds the branch's weights under ``state_dict`` (keys prefixed ``controlnet.``; the frozen
SVD is left out and reloaded from its path), the branch's constructor arguments under
``interdyn_controlnet_config`` and the module's hyper-parameters (the SVD source and the sampling
settings). Reading it needs no Lightning: ``torch.load(weights_only=True)``, then
``ControlNetSDVModel(**config)`` loaded strictly. A run trained with ``ema_decay`` also stores the moving
average of the branch's weights under ``interdyn_branch_ema`` (keys without the prefix); readers take it
unless asked for the last step's weights.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from interdyn.errors import InputError, UnsafeCheckpointError, WeightsMismatchError, WeightsNotFoundError
from interdyn.models.controlnet import ControlNetSDVModel
from interdyn.models.released import load_controlnet
from interdyn.models.sampling import SamplingSettings
from interdyn.training.settings import nest_settings

BRANCH_PREFIX = "controlnet."
CONFIG_KEY = "interdyn_controlnet_config"
EMA_KEY = "interdyn_branch_ema"
WEIGHTS = ("ema", "live")

# Types beyond tensors, containers, numbers and strings that a checkpoint may hold, each a plain value
# type whose unpickling runs no code. Checkpoints of this project (module and DataModule
# hyper-parameters, optimizer, loop and callback states) need none today: the ones torch's
# weights-only unpickler allows by itself (``collections.OrderedDict``, ``torch.Size``, dtypes) suffice.
SAFE_GLOBALS: list[Any] = []


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``http://`` and ``https://`` checkpoint addresses."""
    return str(path).startswith(("http://", "https://"))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint (what ``interdyn fit`` writes) weights-only, with tensors on the CPU.

    A local file is memory-mapped: its tensors are read from disk only when used, so that a test run or the
    hyper-parameter look-up never reads the optimizer state (gigabytes at full size) into memory.

    Raises:
        WeightsNotFoundError: the file or URL does not exist or cannot be fetched.
        UnsafeCheckpointError: the file holds pickled objects other than tensors and plain values, is not a
            torch file at all, or holds something other than a training checkpoint (a list, a plain state dict).
    """
    path = str(path)
    if is_url(path):
        with tempfile.TemporaryDirectory(prefix="interdyn-ckpt-") as folder:
            local = os.path.join(folder, "checkpoint.ckpt")
            try:
                torch.hub.download_url_to_file(path, local, progress=False)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise WeightsNotFoundError(f"cannot download the checkpoint {path}: {err}") from None
            # not mapped: the file is deleted on return
            return _training_checkpoint(_load_file(local, shown=path, mmap=False), path)
    from lightning.fabric.utilities.cloud_io import get_filesystem

    fs = get_filesystem(path)
    if not fs.exists(path):
        raise WeightsNotFoundError(
            f"the checkpoint '{path}' does not exist; pass the path of a .ckpt file written by `interdyn fit` "
            "(runs/<name>/version_<n>/checkpoints/last.ckpt) to --ckpt_path"
        )
    if fs.isdir(path):
        raise WeightsNotFoundError(f"--ckpt_path '{path}' is a folder; pass the .ckpt file inside it")
    if fs.size(path) == 0:
        raise UnsafeCheckpointError(
            f"{path} is empty (0 bytes), not a checkpoint; was it written completely?"
        )
    if "file" in _protocols(fs):
        return _training_checkpoint(_load_file(os.path.expanduser(path), shown=path, mmap=True), path)
    with fs.open(path, "rb") as f:
        return _training_checkpoint(_load_file(f, shown=path, mmap=False), path)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _first_sentence(text: str) -> str:
    """The start of an error's message: its first line, up to its first sentence's end, 200 characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line.split(". ")[0].rstrip(".")[:200]


def _torch_load(source: Any, mmap: bool) -> Any:
    # torch warns about pickle protocols and the like on stderr before any error: the error says what matters
    with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mmap:
            try:
                return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap can only be used" not in str(err):
                    raise
        return torch.load(source, map_location="cpu", weights_only=True)  # also torch's legacy format


def _load_file(source: Any, shown: str, mmap: bool) -> Any:
    """``torch.load`` of a path or open file, weights-only; errors become one sentence."""
    try:
        return _torch_load(source, mmap)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; the text after "WeightsUnpickler error:" is the reason
        text = " ".join(str(err).split())
        detail = text.partition("WeightsUnpickler error:")[2].split(" Check the documentation")[0]
        detail = detail.split(". Please use")[0].strip().rstrip(".")
        if not detail.startswith("Unsupported global"):  # an opcode no torch file has: not a torch file
            raise UnsafeCheckpointError(
                f"cannot read {shown} as a torch checkpoint: it is not a file written by torch.save "
                f"({detail[:200] or _first_sentence(str(err))})"
            ) from None
        raise UnsafeCheckpointError(
            f"the checkpoint {shown} is refused: it is not weights-only (it holds pickled objects that could "
            f"run code when read; {detail[:200]}); interdyn loads only tensors and plain values from "
            "checkpoints, and no option turns this off"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as err:
        reason = _first_sentence(str(err)) or "the file ends early"
        raise UnsafeCheckpointError(
            f"cannot read {shown} as a torch checkpoint ({type(err).__name__}: {reason})"
        ) from None


def _training_checkpoint(checkpoint: Any, shown: str) -> dict[str, Any]:
    """``checkpoint`` when it is a Lightning training checkpoint, else :class:`UnsafeCheckpointError`."""
    if not isinstance(checkpoint, dict):
        raise UnsafeCheckpointError(
            f"{shown} is not a training checkpoint (it holds a {type(checkpoint).__name__}); pass a .ckpt file "
            "written by `interdyn fit`"
        )
    if not isinstance(checkpoint.get("state_dict"), dict):
        kind = (
            "a plain state dict"
            if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values())
            else "a dict"
        )
        raise UnsafeCheckpointError(
            f"{shown} is not a training checkpoint ({kind} without a 'state_dict' entry); pass a .ckpt file "
            "written by `interdyn fit`"
        )
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):  # written before the settings groups: flat names go into their groups
        checkpoint["hyper_parameters"] = nest_settings(hparams)
    return checkpoint


def branch_config(branch: ControlNetSDVModel) -> dict[str, Any]:
    """The branch's constructor arguments, as stored under ``CONFIG_KEY``."""
    return {k: v for k, v in branch.config.items() if not k.startswith("_")}


def keep_branch_only(
    checkpoint: dict[str, Any],
    branch: ControlNetSDVModel,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Drop every weight but the branch's from ``checkpoint["state_dict"]``, record the branch config and,
    when given, the moving average of the branch's weights (``ema_state``, keyed as the branch's own)."""
    state = checkpoint["state_dict"]
    for key in [k for k in state if not k.startswith(BRANCH_PREFIX)]:
        del state[key]
    checkpoint[CONFIG_KEY] = branch_config(branch)
    if ema_state is not None:
        checkpoint[EMA_KEY] = ema_state


def has_ema(checkpoint: dict[str, Any]) -> bool:
    """True when the checkpoint holds a moving average of the branch's weights."""
    return isinstance(checkpoint.get(EMA_KEY), dict)


def branch_state(checkpoint: dict[str, Any], weights: str = "ema") -> dict[str, torch.Tensor]:
    """The branch's weights (keys without the prefix): the moving average when ``weights`` is ``"ema"`` and
    the checkpoint has one, else the last step's (``"live"``)."""
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got '{weights}'.")
    if weights == "ema" and has_ema(checkpoint):
        return dict(checkpoint[EMA_KEY])
    return {
        k[len(BRANCH_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(BRANCH_PREFIX)
    }


def branch_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """None when ``found`` holds exactly the tensors of ``expected`` with their shapes, else a short
    ``(missing [...], unexpected [...], other shapes [...])`` naming the first few of each."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = sorted(
        k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape)
    )
    if not (missing or unexpected or reshaped):
        return None
    return f"(missing {missing[:4]}, unexpected {unexpected[:4]}, other shapes {reshaped[:4]})"


def complete_checkpoint(
    checkpoint: dict[str, Any],
    branch: ControlNetSDVModel,
    ema: torch.nn.Module | None,
    model_state: dict[str, torch.Tensor],
) -> None:
    """Make a project checkpoint (the branch, maybe its average) whole again for loading, in place.

    Checks that its branch weights fit ``branch``; gives the average ``ema`` (None: the model keeps none)
    the checkpoint's, or the branch's own weights when it kept none; fills every frozen weight from
    ``model_state`` (the model's state dict, its SVD loaded from ``svd``).
    """
    state = checkpoint["state_dict"]
    own = {BRANCH_PREFIX + k: v for k, v in branch.state_dict().items()}
    mismatch = branch_mismatch(own, {k: v for k, v in state.items() if k.startswith(BRANCH_PREFIX)})
    if mismatch:
        raise WeightsMismatchError(
            f"the checkpoint's control branch does not match this model {mismatch}; was it trained with "
            "another architecture, conditioning_channels or conditioning_embedding_out_channels?"
        )
    if ema is not None:
        found = checkpoint[EMA_KEY] if has_ema(checkpoint) else None
        if found is not None and branch_mismatch(ema.state_dict(), found):
            raise WeightsMismatchError("the checkpoint's moving average does not match its control branch")
        for key in ema.state_dict():
            state[f"branch_ema.{key}"] = found[key] if found is not None else state[BRANCH_PREFIX + key]
    elif has_ema(checkpoint):
        warnings.warn(
            "the checkpoint holds a moving average of the branch's weights, but this model has ema_decay 0: "
            "it uses the last step's weights (set model.ema_decay to use the average)",
            stacklevel=2,
        )
    for key, value in model_state.items():
        if not key.startswith(BRANCH_PREFIX):
            state.setdefault(key, value)


def is_checkpoint_path(source: str) -> bool:
    """True for sources that name a Lightning checkpoint file rather than a folder or hub id."""
    return str(source).endswith(".ckpt") or Path(source).expanduser().is_file()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of an interdyn training run (:func:`load_checkpoint`) that holds a control branch."""
    local = Path(path).expanduser()
    if not local.is_file():  # said without naming an option: generate, export and the cache all read here
        raise WeightsNotFoundError(f"the checkpoint '{local}' does not exist.")
    checkpoint = load_checkpoint(local)
    if CONFIG_KEY not in checkpoint:
        raise InputError(
            f"'{path}' is not a checkpoint of an interdyn training run (it has no '{CONFIG_KEY}' entry)."
        )
    return checkpoint


def branch_from_checkpoint(
    checkpoint: dict[str, Any],
    torch_dtype: torch.dtype = torch.float32,
    where: str = "the checkpoint",
    weights: str = "ema",
    model_class: type[torch.nn.Module] = ControlNetSDVModel,
) -> torch.nn.Module:
    """Build the branch recorded in a checkpoint read by :func:`read_checkpoint` and load its weights
    strictly (every tensor present, none left over, every shape equal): the moving average of its
    weights when the run kept one and ``weights`` is ``"ema"``, else the last step's. ``model_class`` is
    the branch's class: :class:`ControlNetSDVModel`, or the Wan backbone's branch for a Wan run."""
    config = {k: v for k, v in checkpoint[CONFIG_KEY].items() if not str(k).startswith("_")}
    state = branch_state(checkpoint, weights)
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
            model = model_class(**config)
    except (TypeError, ValueError) as err:
        raise WeightsMismatchError(f"the branch config in {where} is invalid ({err}).") from None
    mismatch = branch_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsMismatchError(
            f"the control branch in {where} does not match its recorded config {mismatch}."
        )
    # Copies in the wanted dtype (off the memory map); assign=True makes them the parameters.
    tensors = {k: v.to(torch_dtype, copy=True) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def checkpoint_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The SVD source (``svd``) and sampling settings recorded in a checkpoint's hyper-parameters."""
    hparams = checkpoint.get("hyper_parameters") or {}
    sampling = hparams.get("sampling") or {}
    settings = {k: sampling[k] for k in SamplingSettings.names() if k in sampling}
    if "svd" in hparams:
        settings["svd"] = hparams["svd"]
    return settings


def load_branch(
    source: str, torch_dtype: torch.dtype = torch.float32, weights: str = "ema"
) -> tuple[ControlNetSDVModel, dict[str, Any]]:
    """A branch from a ``.ckpt`` (with the checkpoint's settings; its moving average of the weights when
    it has one and ``weights`` is ``"ema"``), or from a folder / hub id through :func:`load_controlnet`
    (released folders are converted; settings empty)."""
    if is_checkpoint_path(source):
        checkpoint = read_checkpoint(source)
        branch = branch_from_checkpoint(checkpoint, torch_dtype, where=f"'{source}'", weights=weights)
        return branch, checkpoint_settings(checkpoint)
    return load_controlnet(source, torch_dtype=torch_dtype).eval(), {}
