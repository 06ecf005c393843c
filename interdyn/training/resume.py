"""What ``--ckpt_path last`` resumes from.

Lightning looks for ``last.ckpt`` only in the folder this run's checkpoints will go to. A
``ModelCheckpoint`` without a ``dirpath`` writes into the logger's run folder
(``<save_dir>/<name>/version_<n>/checkpoints``), and a TensorBoard or CSV logger numbers a new folder for
every run, so that folder is always new and empty: a run could never resume its predecessor. Here
``last`` means the newest ``last*.ckpt`` of *any* run of the same logger name
(``<save_dir>/<name>/*/checkpoints``), or of the callback's own ``dirpath`` when it has one, or an
on-exception checkpoint; "newest" is the latest modification time (Lightning's own rule among several
candidates; a ``save_last: link`` counts with the time of the checkpoint it points to).

The search only reads the file system, before any process of the run writes a checkpoint, so every rank of
a multi-process run finds the same file. A user who overrides the logger (another ``save_dir``, ``name``
or ``version``) is searched where that logger writes.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint


def last_checkpoint_folders(trainer: Any) -> list[tuple[str, ModelCheckpoint]]:
    """The folders (glob patterns) that each ``ModelCheckpoint`` of ``trainer`` writes ``last`` into, in
    this run or an earlier run of the same logger name, with the callback."""
    folders = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append((glob.escape(str(callback.dirpath)), callback))
        elif trainer.loggers:
            logger = trainer.loggers[0]  # the one Lightning names the checkpoint folder after
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            run_root = glob.escape(os.path.join(str(save_dir), str(logger.name)))
            folders.append((os.path.join(run_root, "*", "checkpoints"), callback))
        else:
            folders.append(
                (glob.escape(os.path.join(str(trainer.default_root_dir), "checkpoints")), callback)
            )
    return folders


def _last_files(pattern: str, callback: ModelCheckpoint) -> set[str]:
    """The ``last*.ckpt`` files (Lightning's naming: ``last``, ``last-v1``...) in the folders of ``pattern``."""
    fs = get_filesystem(pattern)
    name = re.compile(
        rf"^{re.escape(callback.CHECKPOINT_NAME_LAST)}(-v?\d+)?{re.escape(callback.FILE_EXTENSION)}$"
    )
    found = fs.glob(os.path.join(pattern, callback.CHECKPOINT_NAME_LAST + "*" + callback.FILE_EXTENSION))
    # fsspec drops the protocol of remote paths: put it back, as the folders were given
    protocol = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
    return {
        protocol + p if protocol and not str(p).startswith(protocol) else str(p)
        for p in found
        if name.match(os.path.basename(str(p)))
    }


def find_last_checkpoint(trainer: Any) -> str | None:
    """The checkpoint ``--ckpt_path last`` resumes from (see the module's docstring), or None."""
    candidates: set[str] = {
        cb.ckpt_path for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint) and cb.ckpt_path
    }
    for pattern, callback in last_checkpoint_folders(trainer):
        candidates |= _last_files(pattern, callback)
    times = {}
    for path in candidates:
        fs = get_filesystem(path)
        if fs.exists(path):  # a `last` link whose checkpoint was deleted does not count
            times[path] = fs.modified(path).timestamp()
    if not times:
        return None
    return max(times, key=lambda p: (times[p], p))


def searched_folders(trainer: Any) -> str:
    """Where :func:`find_last_checkpoint` looked, for messages."""
    return ", ".join(dict.fromkeys(glob_pattern for glob_pattern, _ in last_checkpoint_folders(trainer)))
