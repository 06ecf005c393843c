"""The package layers: every package of interdyn imports only the packages below it, so that imports flow
one way (errors < utils < contract < data, models, metrics < inputs, training < callbacks < commands <
app, world). Models import no Lightning, and metrics know nothing of the data, the model or the training
loop (they take videos, masks and metadata as plain tensors, arrays and dicts)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "interdyn"
_BASE = {"errors", "utils"}
# The interdyn packages (and top-level modules) each package may import, itself included.
ALLOWED: dict[str, set[str]] = {
    "utils": _BASE,
    "metrics": _BASE | {"metrics"},
    "models": _BASE | {"contract", "models"},
    "data": _BASE | {"contract", "data"},
    "inputs": _BASE | {"contract", "data", "inputs"},
    "training": _BASE | {"contract", "data", "models", "training"},
    "callbacks": _BASE | {"contract", "data", "models", "metrics", "callbacks"},
    "commands": _BASE
    | {"contract", "data", "models", "metrics", "inputs", "training", "callbacks", "commands"},
    "app": _BASE | {"contract", "data", "models", "inputs", "commands", "app"},
    "world": _BASE
    | {"contract", "data", "models", "metrics", "inputs", "training", "callbacks", "commands", "world"},
}
TOP_MODULES = {"errors": set(), "contract": {"errors"}}
NO_LIGHTNING = ("utils", "metrics", "models", "data/clip_spec.py", "inputs")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def interdyn_parts(path: Path) -> set[str]:
    """The interdyn packages or top-level modules that ``path`` imports (``interdyn.models.unet`` -> models)."""
    return {name.split(".")[1] for name in imported_modules(path) if name.startswith("interdyn.")}


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages == set(ALLOWED), "add the new package to ALLOWED with what it may import"
    assert modules == set(TOP_MODULES), "interdyn/ keeps only entry modules at its top level"


def test_the_top_level_holds_subpackages_and_a_few_modules():
    """interdyn/ is its layered subpackages, its ``__init__.py`` and at most a few base modules: no loose
    files or folders beside them."""
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {*ALLOWED, "__init__.py", *(f"{m}.py" for m in TOP_MODULES)}
    assert len(TOP_MODULES) <= 3, "a new top-level module belongs in a subpackage"
    assert all((PACKAGE / p).is_dir() for p in ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_flow_one_way(layer):
    offending = {
        f"{path.relative_to(PACKAGE)}: interdyn.{part}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for part in interdyn_parts(path) - ALLOWED[layer]
    }
    assert not offending, f"interdyn/{layer} imports a layer above it: {sorted(offending)}"


def test_top_level_modules_import_only_what_is_below_them():
    for name, allowed in TOP_MODULES.items():
        assert interdyn_parts(PACKAGE / f"{name}.py") <= allowed, name


@pytest.mark.parametrize("where", NO_LIGHTNING)
def test_no_lightning_below_training(where):
    paths = [PACKAGE / where] if where.endswith(".py") else sorted((PACKAGE / where).rglob("*.py"))
    offending = [
        str(path.relative_to(PACKAGE))
        for path in paths
        if any(
            n == "lightning" or n.startswith(("lightning.", "pytorch_lightning"))
            for n in imported_modules(path)
        )
    ]
    assert not offending, f"these import Lightning: {offending}"
