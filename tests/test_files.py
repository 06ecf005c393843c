"""Atomic writes: a file appears whole under its name or not at all, and no temporary file stays behind."""

from __future__ import annotations

import pytest

from interdyn.files import TMP_SUFFIX, atomic_file, temporary_path, write_atomic


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
