"""Both spellings of an option: ``--shard_size`` and ``--shard-size``.

The preparers (``data_prep``), the world's scripts and the benchmarks once took hyphenated options
(``--shard-size``, ``--no-progress``, ``--sam2-checkpoint``, ...) and now take underscores, as LightningCLI
and the ``interdyn`` commands do. :class:`ScriptParser` keeps a user's older command lines and job
scripts working: each option written with underscores is also accepted with hyphens, without showing
twice in ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def hyphenated(option: str) -> str:
    """``--shard_size`` -> ``--shard-size`` (the leading dashes kept)."""
    body = option.lstrip("-")
    return option[: len(option) - len(body)] + body.replace("_", "-")


def add_hyphen_spellings(parser: argparse.ArgumentParser) -> list[str]:
    """Let ``parser`` (and its argument groups) accept every ``--a_b`` option as ``--a-b`` too; returns the
    spellings added. A hyphenated option that the parser already defines keeps its own meaning."""
    added = []
    # argparse keeps no public table of its option strings; groups share this one with their parser
    table = parser._option_string_actions
    for action in parser._actions:
        for option in action.option_strings:
            alias = hyphenated(option)
            if option.startswith("--") and alias != option and alias not in table:
                table[alias] = action
                added.append(alias)
    return added


class ScriptParser(argparse.ArgumentParser):
    """argparse's parser, where ``--a-b`` is a second spelling of each ``--a_b`` option (the spelling
    the project's scripts used before they moved to underscores). Help and error messages name the
    underscore spelling."""

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        add_hyphen_spellings(self)  # at parse time, so that options added after construction count too
        return super().parse_known_args(args, namespace)
