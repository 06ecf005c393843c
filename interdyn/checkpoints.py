"""Loading training checkpoints safely: every load, local file, remote file system or URL, unpickles
weights-only (tensors and plain values), so that a checkpoint can never run code.

A pickle can call any importable function while it is read; ``torch.load(weights_only=True)`` only
rebuilds tensors, containers, numbers and strings (and the types allow-listed below). Lightning's
own loader defaults to ``weights_only=False`` for URLs and lets the caller turn the restriction off;
:class:`WeightsOnlyCheckpointIO` takes its place in the trainer's strategy and ignores that switch.
Tensors are always mapped to the CPU: Lightning then copies them to each rank's own device, so no
rank ever allocates on the device the checkpoint was saved from (``cuda:0``).

:class:`LastCheckpointOnInterrupt` writes ``last.ckpt`` when ``fit`` is interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from interdyn.errors import ConfigError, UnsafeCheckpointError, WeightsNotFoundError

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
    return checkpoint


class WeightsOnlyCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO with loading replaced by :func:`load_checkpoint`.

    Saving and removing go to ``inner`` (Lightning's default, or whatever the strategy had, such as an
    asynchronous writer). ``load_checkpoint``'s ``weights_only`` and ``map_location`` arguments are
    ignored on purpose: loading is always weights-only, onto the CPU. With the ``trainer`` it serves, a load
    outside ``fit`` (``test``, ``validate``, ``predict``) keeps only what those restore: the optimizer and
    scheduler states are dropped unread (memory-mapped, they never reach memory); a load for ``fit`` needs
    them.
    """

    def __init__(self, inner: CheckpointIO | None = None, trainer: Any | None = None) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self.trainer = trainer

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        checkpoint = load_checkpoint(path)
        if self.trainer is None:
            return checkpoint
        from lightning.pytorch.trainer.states import TrainerFn

        if self.trainer.state.fn != TrainerFn.FITTING:
            for key in ("optimizer_states", "lr_schedulers"):
                checkpoint.pop(key, None)
        elif "optimizer_states" not in checkpoint:
            raise ConfigError(
                f"{path} holds weights only (no optimizer state), so `fit` cannot resume from it; pass "
                "a last.ckpt or step checkpoint written by `interdyn fit`, or test it with `interdyn test`"
            )
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def secure_strategy(strategy: Any, trainer: Any | None = None) -> None:
    """Make ``strategy`` (``trainer``'s) load checkpoints only through :func:`load_checkpoint`."""
    current = strategy.checkpoint_io
    if not isinstance(current, WeightsOnlyCheckpointIO):
        strategy.checkpoint_io = WeightsOnlyCheckpointIO(current, trainer)
    elif trainer is not None:
        current.trainer = trainer


class LastCheckpointOnInterrupt(Callback):
    """On Ctrl-C during ``fit``, write the ``last`` checkpoint of every ``ModelCheckpoint(save_last=...)``
    so that ``--ckpt_path <its folder>/last.ckpt`` resumes from the interrupted step.

    Single-process runs only: in a multi-process run the save needs every rank at a barrier, which an
    interrupt may not reach; there the periodic checkpoints (``every_n_train_steps``) are what is kept.
    """

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.trainer.states import TrainerFn
        from lightning.pytorch.utilities.rank_zero import rank_zero_info

        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.world_size > 1 or trainer.global_step == 0:
            return
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
                trainer.save_checkpoint(path)
                rank_zero_info(
                    f"interrupted at step {trainer.global_step}: saved {path} (resume: --ckpt_path {path})"
                )
