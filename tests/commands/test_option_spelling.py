"""Options renamed from hyphens to underscores still work with their old spelling (``--shard-size`` is
``--shard_size``), in every script whose options were renamed: the preparers, the latent cache, the
SAM2 timing script, the world's report and the benchmarks."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from types import ModuleType

import pytest

from interdyn.commands.spelling import ScriptParser, hyphenated
from tests.helpers import REPO_ROOT

# Every option renamed so far (git log -S of the hyphenated names), by the script that parses it.
RENAMED = {
    "data_prep.ssv2": [
        "--shard-size", "--no-progress", "--num-frames", "--target-fps", "--frame-stride",
        "--sam2-checkpoint", "--sam2-config", "--sam2-prompt-every", "--sam2-override", "--max-gap",
    ],
    "data_prep.clevrer": ["--shard-size", "--no-progress", "--num-frames", "--no-groups"],
    "data_prep.folder": [
        "--shard-size", "--no-progress", "--target-fps", "--min-blob", "--short-objects",
        "--val-fraction", "--test-fraction",
    ],
    "data_prep.synthetic": ["--shard-size", "--test-groups"],
    "data_prep.latents": [
        "--batch-size", "--encoder-dtype", "--frame-sampling", "--frame-stride", "--no-progress",
        "--noise-aug-strength", "--num-frames", "--store-dtype", "--vae-chunk-size",
    ],
    "data_prep/slurm/sam2_frame_time.py": ["--frames-per-video"],
    "interdyn.world.report": ["--conditioning-channels", "--test-shards"],
    "benchmarks/gpu_check.py": ["--budget-s", "--dry-run", "--no-install"],
    "benchmarks/loader.py": ["--batch-size", "--no-write"],
    "benchmarks/optimizer_state.py": ["--no-write"],
    "benchmarks/sample.py": ["--compile-backend", "--decode-chunk", "--no-write"],
    "benchmarks/train_step.py": ["--budget-gib", "--max-batch", "--no-write"],
}  # fmt: skip


class Captured(Exception):
    """Raised instead of parsing: carries the script's parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def load(script: str) -> ModuleType:
    """A module by name, or a script file by path (benchmarks and SLURM helpers are not packages)."""
    if not script.endswith(".py"):
        return importlib.import_module(script)
    path = REPO_ROOT / script
    sys.path.insert(0, str(path.parent))  # the benchmarks import their siblings (report, ...)
    try:
        spec = importlib.util.spec_from_file_location(f"_spelling_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        sys.modules.pop(f"_spelling_{path.stem}", None)
    return module


def script_parser(script: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser that ``script``'s entry point builds, stopped just before it parses."""

    def capture(self: ScriptParser, args=None, namespace=None):  # noqa: ANN001, ANN202
        raise Captured(self)

    monkeypatch.setattr(ScriptParser, "parse_known_args", capture)
    module = load(script)
    entry = getattr(module, "parse_args", None) or getattr(module, "build_parser", None) or module.main
    with pytest.raises(Captured) as caught:
        parser = entry([]) if entry.__code__.co_argcount else entry()
        parser.parse_args([])  # build_parser returns the parser instead of parsing
    monkeypatch.undo()
    return caught.value.parser


def value_for(action: argparse.Action) -> list[str]:
    """Command-line words that give ``action`` a value other than its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return [str(choice)]
    if action.type is int:
        return ["3"]
    if action.type is float:
        return ["0.25"]
    return ["some/path"]


@pytest.mark.parametrize("script", sorted(RENAMED))
def test_old_spellings_parse_as_the_new_ones(script, monkeypatch):
    parser = script_parser(script, monkeypatch)
    assert isinstance(parser, ScriptParser)
    for action in parser._actions:
        action.required = False  # only the renamed options are given
    for old in RENAMED[script]:
        new = "--" + old[2:].replace("-", "_")
        action = next(a for a in parser._actions if new in a.option_strings)
        words = value_for(action)
        given_new = vars(parser.parse_args([new, *words]))
        given_old = vars(parser.parse_args([old, *words]))
        assert given_old == given_new, old
        assert given_old[action.dest] != action.default, old
        assert old not in parser.format_help()  # --help names one spelling


def test_script_parser_keeps_one_meaning_per_option(capsys):
    parser = ScriptParser(prog="prep")
    group = parser.add_argument_group("output")
    group.add_argument("--shard_size", type=int, default=100)
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--dry-run", dest="hyphen_only", action="store_true")  # already hyphenated
    parser.add_argument("--dry_run", dest="underscore", action="store_true")  # a different option
    args = parser.parse_args(["--shard-size=7", "--no-progress", "--dry-run"])
    assert args.shard_size == 7 and args.no_progress and args.hyphen_only and not args.underscore
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--shard-size", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shard_size: invalid int value: 'many'" in err and "unrecognized" not in err
    assert hyphenated("--sam2_prompt_every") == "--sam2-prompt-every" and hyphenated("-x") == "-x"


def test_plain_argparse_would_refuse_them(capsys):
    """The failure the scripts had before: the old spelling is an unrecognised argument."""
    parser = argparse.ArgumentParser(prog="prep")
    parser.add_argument("--shard_size", type=int, default=100)
    with pytest.raises(SystemExit):
        parser.parse_args(["--shard-size", "5"])
    assert "unrecognized arguments: --shard-size" in capsys.readouterr().err
