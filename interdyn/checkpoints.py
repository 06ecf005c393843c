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
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from interdyn.errors import UnsafeCheckpointError, WeightsNotFoundError

# Types beyond tensors, containers, numbers and strings that a checkpoint may hold, each a plain value
# type whose unpickling runs no code. Checkpoints of this project (module and DataModule
# hyper-parameters, optimizer, loop and callback states) need none today: the ones torch's
# weights-only unpickler allows by itself (``collections.OrderedDict``, ``torch.Size``, dtypes) suffice.
SAFE_GLOBALS: list[Any] = []


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``http://`` and ``https://`` checkpoint addresses."""
    return str(path).startswith(("http://", "https://"))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint weights-only, with tensors on the CPU.

    Raises:
        WeightsNotFoundError: the file or URL does not exist or cannot be fetched.
        UnsafeCheckpointError: the file holds pickled objects other than tensors and plain values, or is
            not a torch checkpoint at all.
    """
    path = str(path)
    if is_url(path):
        with tempfile.TemporaryDirectory(prefix="interdyn-ckpt-") as folder:
            local = os.path.join(folder, "checkpoint.ckpt")
            try:
                torch.hub.download_url_to_file(path, local, progress=False)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise WeightsNotFoundError(f"cannot download the checkpoint {path}: {err}") from None
            return _load_file(local, shown=path)
    from lightning.fabric.utilities.cloud_io import get_filesystem

    fs = get_filesystem(path)
    if not fs.exists(path):
        raise WeightsNotFoundError(
            f"the checkpoint '{path}' does not exist; pass the path of a .ckpt file written by `interdyn fit` "
            "(runs/<name>/version_<n>/checkpoints/last.ckpt) to --ckpt_path"
        )
    if fs.isdir(path):
        raise WeightsNotFoundError(f"--ckpt_path '{path}' is a folder; pass the .ckpt file inside it")
    with fs.open(path, "rb") as f:
        return _load_file(f, shown=path)


def _load_file(f: Any, shown: str) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; its "WeightsUnpickler error:" line names the refused object
        lines = [line.strip() for line in str(err).splitlines()]
        refused = next((line for line in lines if line.startswith("WeightsUnpickler error:")), None)
        if refused is None:  # not a pickle at all
            raise UnsafeCheckpointError(
                f"cannot read {shown} as a torch checkpoint ({lines[0][:200]})"
            ) from None
        detail = refused.removeprefix("WeightsUnpickler error:").split(". Please use")[0].strip()
        raise UnsafeCheckpointError(
            f"the checkpoint {shown} is refused: it is not weights-only (it holds pickled objects that could "
            f"run code when read; {detail[:200]}); interdyn loads only tensors and plain values from "
            "checkpoints, and no option turns this off"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise UnsafeCheckpointError(
            f"cannot read {shown} as a torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UnsafeCheckpointError(
            f"{shown} is not a training checkpoint (it holds a {type(checkpoint).__name__})"
        )
    return checkpoint


class WeightsOnlyCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO with loading replaced by :func:`load_checkpoint`.

    Saving and removing go to ``inner`` (Lightning's default, or whatever the strategy had, such as an
    asynchronous writer). ``load_checkpoint``'s ``weights_only`` and ``map_location`` arguments are
    ignored on purpose: loading is always weights-only, onto the CPU.
    """

    def __init__(self, inner: CheckpointIO | None = None) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def secure_strategy(strategy: Any) -> None:
    """Make ``strategy`` (a trainer's) load checkpoints only through :func:`load_checkpoint`."""
    current = strategy.checkpoint_io
    if not isinstance(current, WeightsOnlyCheckpointIO):
        strategy.checkpoint_io = WeightsOnlyCheckpointIO(current)


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
