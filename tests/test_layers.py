"""The package layers: models import no Lightning, and metrics know nothing of the data, the model or the
training loop (they take videos, masks and metadata as plain tensors, arrays and dicts)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "interdyn"
FORBIDDEN = {
    "models": ("lightning", "interdyn.module", "interdyn.callbacks", "interdyn.data"),
    "metrics": ("lightning", "interdyn.module", "interdyn.callbacks", "interdyn.data", "interdyn.models"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_stay_inside_their_bounds(layer):
    offending = {
        f"{path.name}: {name}"
        for path in sorted((PACKAGE / layer).glob("*.py"))
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer])
    }
    assert not offending, f"interdyn/{layer} imports {sorted(offending)}"
