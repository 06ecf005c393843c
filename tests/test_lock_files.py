"""The install's lock files (requirements/*.lock, used as they are by `make install` and `make demo`)
resolve pyproject.toml's pins: a pin changed in one place and not the other fails here, not on a user's
machine."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.helpers import REPO_ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(
    ("lock", "extras"), [("runtime.lock", ()), ("dev.lock", ("dev", "app"))], ids=["runtime", "dev"]
)
def test_the_lock_files_hold_pyprojects_pins(lock: str, extras: tuple[str, ...]) -> None:
    project = _project()
    wanted = _pins(project["dependencies"])
    for extra in extras:
        wanted.update(_pins(project["optional-dependencies"][extra]))
    assert wanted, "pyproject.toml pins nothing"
    locked = _pins((REPO_ROOT / "requirements" / lock).read_text().splitlines())
    wrong = {
        name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version
    }
    assert not wrong, (
        f"requirements/{lock} disagrees with pyproject.toml (pin: (wanted, locked)); run `make lock`: {wrong}"
    )


def test_the_runtime_lock_has_no_test_tools() -> None:
    locked = _pins((REPO_ROOT / "requirements" / "runtime.lock").read_text().splitlines())
    assert "torch" in locked
    assert not {"pytest", "pytest-xdist", "ruff", "gradio"} & set(locked)


def test_the_lock_files_name_no_index() -> None:
    """The lock files list names and versions only: the install uses whatever index the user configured."""
    for lock in ("runtime.lock", "dev.lock"):
        text = (REPO_ROOT / "requirements" / lock).read_text()
        assert "://" not in text and "--index" not in text
