"""Writing files so that an interrupted run never leaves a half-written file under the final name.

Every writer of the project (shards, indexes and reports, result tables, videos, weights) goes through
:func:`write_atomic` or :func:`atomic_file`: the data goes to a temporary sibling, is flushed to disk and
renamed over the final name. The temporary name carries the host and process id, so that processes on
several machines sharing a folder never write into one temporary file, and ends in ``TMP_SUFFIX``, so
that a writer can find and remove the leftovers of killed runs.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temporary_path(path: str | Path) -> Path:
    """The temporary sibling that :func:`atomic_file` writes ``path`` through (unique per host and process)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file that becomes ``path`` when the block ends without an error (flushed to disk,
    then renamed); on an error the temporary file is removed and ``path`` is left as it was. Creates the
    folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through :func:`atomic_file`; returns the path."""
    path = Path(path)
    with atomic_file(path) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return path


def unwritable_reason(folder: str | Path) -> str | None:
    """Why files cannot be written into ``folder`` (made with its parents where missing), or None when
    they can. Nothing is created: the nearest existing folder on the way is probed with a temporary file,
    which tells what a later write would meet (a read-only file system, permissions, a file in the way)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"'{folder}' exists and is not a folder"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder"
    try:
        handle, name = tempfile.mkstemp(prefix=".write-test-", suffix=TMP_SUFFIX, dir=existing)
    except OSError as err:
        return f"cannot write in '{existing}' ({err.strerror or type(err).__name__})"
    os.close(handle)
    os.unlink(name)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_modes(folder: Path) -> None:
    """Give the files and folders under ``folder`` the modes a plain ``open``/``mkdir`` would: safetensors
    writes its files readable by the owner alone (0600), which hides shared weights from a lab's group."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_folder_atomic(path: str | Path, fill) -> Path:  # noqa: ANN001 (a callable taking the folder)
    """Make the folder ``path`` by calling ``fill(tmp_folder)`` on a temporary sibling and renaming it into
    place at the end (an existing folder of that name is replaced only then); returns the path. Its files
    get the modes the umask gives new files, whatever the library that wrote them chose."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        _default_modes(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
