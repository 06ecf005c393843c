"""Helpers shared by several test modules (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from interdyn.commands.cli import main


def run_interdyn(
    *args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> subprocess.CompletedProcess:
    """``interdyn *args`` in this process, from ``cwd``: its exit code and output, as a process would give."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)
