"""Sizes a reader can hold in mind: no source file of the product, its data preparation, benchmarks or
experiments over 450 lines, and no function (or method) over 80, counted from its ``def`` line to its last.
A file that grows past the limit is split into cohesive modules, a function into well-named helpers.
The package layering is tests/test_layers.py's; the paths docs/architecture.md names are checked here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO_ROOT

SOURCES = ("interdyn", "data_prep", "benchmarks", "experiments")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
# Over the file limit for now, each with its reason; remove the entry once the file is split.
TEMPORARY_LONG_FILES: dict[str, str] = {}


def source_files() -> list[Path]:
    return sorted(p for top in SOURCES for p in (REPO_ROOT / top).rglob("*.py"))


def name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def test_there_are_sources_to_check():
    assert {name(p).split("/")[0] for p in source_files()} == set(SOURCES)


def test_no_source_file_is_over_450_lines():
    lengths = {name(p): len(p.read_text().splitlines()) for p in source_files()}
    too_long = {f: n for f, n in lengths.items() if n > MAX_FILE_LINES and f not in TEMPORARY_LONG_FILES}
    assert not too_long, f"split these into cohesive modules (at most {MAX_FILE_LINES} lines): {too_long}"
    fixed = [f for f in TEMPORARY_LONG_FILES if lengths.get(f, 0) <= MAX_FILE_LINES]
    assert not fixed, f"within the limit now (or gone): remove them from TEMPORARY_LONG_FILES: {fixed}"


def long_functions(source: str, label: str) -> dict[str, int]:
    """``{"label:line name": lines}`` of the functions and methods (nested ones too) over the limit."""
    out = {}
    for node in ast.walk(ast.parse(source, filename=label)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out[f"{label}:{node.lineno} {node.name}"] = lines
    return out


def test_no_function_is_over_80_lines():
    too_long = {k: v for p in source_files() for k, v in long_functions(p.read_text(), name(p)).items()}
    assert not too_long, (
        f"shorten these with well-named helpers (at most {MAX_FUNCTION_LINES} lines): {too_long}"
    )


def test_the_count_sees_methods_and_nested_functions():
    body = "".join(f"            x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    source = f"class A:\n    def method(self):\n        def inner():\n{body}        return inner\n"
    assert long_functions(source, "a.py") == {"a.py:2 method": 83, "a.py:3 inner": 81}
    exactly = "def at_the_limit():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
    assert long_functions(exactly, "b.py") == {}


# a path a doc names: a source root, then path characters (globs and brace lists are left unchecked)
DOC_PATH = re.compile(r"\b(?:interdyn|data_prep|benchmarks|experiments|tests|configs)/[\w/.*{},-]*")


def test_the_paths_the_architecture_names_exist():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    paths = {m.rstrip(".,-") for m in DOC_PATH.findall(text) if not set("*{},") & set(m.rstrip(".,-"))}
    assert {p for p in paths if p.startswith("interdyn/") and p.endswith(".py")}, (
        "no interdyn/...py path found"
    )
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
