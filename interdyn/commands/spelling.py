"""Both spellings of an option: ``--shard_size`` and ``--shard-size``.

The preparers (``data_prep``), the world's scripts and the benchmarks once took hyphenated options
(``--shard-size``, ``--no-progress``, ``--sam2-checkpoint``, ...) and now take underscores, as LightningCLI
and the ``interdyn`` commands do. :class:`ScriptParser` keeps a user's older command lines and job
scripts working: each option written with underscores is also accepted with hyphens, without showing
twice in ``--help``.

The settings objects brought renames too: :data:`OLD_SPELLINGS` keeps the commands' older options
(``--steps``, ``--eval_window``) and :func:`nested_clip_options` moves the clip settings that ``interdyn fit``
once took flat (``--data.init_args.num_frames``) into the DataModule's ``clip`` group.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import re
from collections.abc import Sequence
from typing import Any

import yaml

from interdyn.errors import ConfigError


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


# ---------------------------------------------------------------------------- settings objects
# Options renamed when the commands took their names from the settings objects (SamplingSettings,
# ClipSpec): the field -> its older spellings, which keep working.
OLD_SPELLINGS: dict[str, tuple[str, ...]] = {
    "num_inference_steps": ("steps",),
    "min_guidance_scale": ("min_guidance",),
    "max_guidance_scale": ("max_guidance",),
    "window": ("eval_window",),
}
_DATA_FLAG = re.compile(r"(--data\.(?:init_args\.)?)(\w+)(=.*)?")


def read_yaml(path: str) -> Any:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # not a file (a YAML string), or one the parser reports itself


def _data_section(path: str) -> dict[str, Any]:
    """The ``data:`` section of a config file ({} when there is none or the file cannot be read)."""
    content = read_yaml(path)
    section = content.get("data") if isinstance(content, dict) else None
    return section if isinstance(section, dict) else {}


def option_values(argv: Sequence[str], names: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(option, value)`` of every ``--name value`` and ``--name=value`` in ``argv`` for ``names``."""
    found = [(a, b) for a, b in zip(argv, argv[1:], strict=False) if a in names]
    found += [tuple(a.split("=", 1)) for a in argv if a.split("=", 1)[0] in names and "=" in a]
    return found  # type: ignore[return-value]


def _data_class(argv: Sequence[str]) -> type | None:
    """The DataModule class that ``--config`` files and ``--data`` options of ``argv`` name (the last one),
    or None when none is named or it cannot be imported."""
    class_path = None
    for option, value in option_values(argv, ("--config", "--data", "--data.class_path")):
        if option == "--config":
            class_path = _data_section(value).get("class_path", class_path)
        elif re.fullmatch(r"[\w.]+", value):
            class_path = value
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "interdyn.data"), name)
    except (ImportError, AttributeError, ValueError):
        return None


def nested_clip_options(argv: Sequence[str]) -> list[str]:
    """``interdyn fit``'s command line with the clip settings of a DataModule that takes a ``clip`` group
    (:class:`~interdyn.data.datamodule.ShardDataModule`) moved into it when spelt flat, as they were before:
    ``--data.init_args.num_frames 4`` -> ``--data.init_args.clip.num_frames 4`` (``eval_window`` ->
    ``clip.window``). A ``--config`` file that spells them flat is refused with one sentence saying where
    they go; other DataModules' options are left alone."""
    from interdyn.data.clip_spec import PAPER_CLIP as paper
    from interdyn.data.clip_spec import ClipSpec

    data = _data_class(argv)
    if data is None or "clip" not in inspect.signature(data).parameters:
        return list(argv)
    own = set(inspect.signature(data).parameters)
    flat = {name: name for name in ClipSpec.names()} | {"eval_window": "window"}
    flat = {old: new for old, new in flat.items() if old not in own}
    for _, value in option_values(argv, ("--config",)):
        init = _data_section(value).get("init_args")
        old = sorted(set(init) & set(flat)) if isinstance(init, dict) else []
        if old:
            raise ConfigError(
                f"the config {value} sets data.init_args.{old[0]}, which is now data.init_args.clip."
                f"{flat[old[0]]} (the clip settings are one group, e.g. `clip: {{height: 64, width: 64}}`, "
                f"holding only what differs from the paper's {paper.num_frames} frames at {paper.fps:g} fps of "
                f"{paper.height}x{paper.width})"
            )
    return _renamed(argv, _DATA_FLAG, {old: f"init_args.clip.{new}" for old, new in flat.items()})


_MODEL_FLAG = re.compile(r"(--model\.(?:init_args\.)?)(\w+)(=.*)?")


def nested_model_options(argv: Sequence[str]) -> list[str]:
    """``interdyn fit``'s command line with the module settings that were flat before they became groups
    (:data:`~interdyn.training.settings.GROUPS`) moved into their group: ``--model.num_inference_steps 4``
    -> ``--model.sampling.num_inference_steps 4``. A ``--config`` file whose ``model:`` section spells one
    flat is refused with one sentence saying where it goes."""
    from interdyn.training.settings import GROUPS

    group_of = {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    for _, value in option_values(argv, ("--config",)):
        content = read_yaml(value)
        model = content.get("model") if isinstance(content, dict) else None
        if isinstance(model, dict) and "class_path" not in model:
            old = sorted(set(model) & set(group_of))
            if old:
                raise ConfigError(
                    f"the config {value} sets model.{old[0]}, which is now model.{group_of[old[0]]}.{old[0]} "
                    f"(the module's settings are groups: {', '.join(GROUPS)}; write e.g. "
                    f"`{group_of[old[0]]}: {{{old[0]}: ...}}` under model)"
                )
    return _renamed(argv, _MODEL_FLAG, {name: f"{group}.{name}" for name, group in group_of.items()})


def _renamed(argv: Sequence[str], flag: re.Pattern[str], renames: dict[str, str]) -> list[str]:
    """``argv`` with each option that ``flag`` matches and whose name ``renames`` holds given its new
    name (under the same ``--model.`` / ``--data.`` and ``init_args.`` prefix it was written with)."""
    out = []
    for arg in argv:
        match = flag.fullmatch(arg)
        if match and match.group(2) in renames:
            new = renames[match.group(2)]
            prefix = (
                match.group(1)
                if not new.startswith("init_args.")
                else match.group(1).removesuffix("init_args.")
            )
            arg = f"{prefix}{new}{match.group(3) or ''}"
        out.append(arg)
    return out
