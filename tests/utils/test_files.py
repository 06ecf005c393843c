"""Atomic writes: a file appears whole under its name or not at all, and no temporary file stays behind."""

from __future__ import annotations

import pytest

from interdyn.utils.files import TMP_SUFFIX, atomic_file, temporary_path, write_atomic


def test_write_atomic_replaces_whole_files(tmp_path) -> None:
    path = tmp_path / "new" / "table.md"
    assert write_atomic(path, "first") == path and path.read_text() == "first"
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["table.md"]


def test_an_error_while_writing_keeps_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "index.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"half")
        handle.flush()
        assert temporary_path(path).read_bytes() == b"half" and path.read_text() == "old"
        raise RuntimeError("failed mid-write")
    assert path.read_text() == "old"
    assert not list(tmp_path.glob(f"*{TMP_SUFFIX}"))
    # the temporary name is unique per host and process and ends in the suffix that cleanups look for
    assert temporary_path(path).name.startswith("index.json.") and temporary_path(path).name.endswith(
        TMP_SUFFIX
    )


def test_a_written_folder_is_readable_like_any_new_file(tmp_path) -> None:
    """safetensors creates its files 0600; the folder's files end up with the umask's default modes."""
    import os

    import torch
    from safetensors.torch import save_file

    from interdyn.utils.files import write_folder_atomic

    def fill(folder):
        (folder / "unet").mkdir()
        save_file({"w": torch.zeros(2)}, str(folder / "unet" / "weights.safetensors"))

    old = os.umask(0o022)
    try:
        out = write_folder_atomic(tmp_path / "model", fill)
    finally:
        os.umask(old)
    assert os.stat(out / "unet" / "weights.safetensors").st_mode & 0o777 == 0o644
    assert os.stat(out / "unet").st_mode & 0o777 == 0o755


def test_unwritable_reason_probes_without_creating(tmp_path) -> None:
    from interdyn.utils.files import unwritable_reason

    target = tmp_path / "new" / "deeper"
    assert unwritable_reason(target) is None and not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert unwritable_reason(blocker) == f"'{blocker}' exists and is not a folder"
    assert unwritable_reason(blocker / "sub") == f"'{blocker}' is a file, not a folder"
    assert unwritable_reason("/proc/self/interdyn-out").startswith("cannot write in '/proc/self'")
