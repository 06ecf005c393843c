"""The commands of ``interdyn`` outside LightningCLI (``generate``, ``export``, ``evaluate``, ``weights``), in
LightningCLI's style: jsonargparse parsers built from a typed dataclass or function, whose docstring gives
the ``--help`` text, with ``--config`` and ``--print_config``, options spelled with underscores.

Two conveniences keep the command lines short: a ``bool`` option is also a bare flag (``--overwrite`` is
``--overwrite true``), and the options named in ``multiple`` take several values (``--control a.webm
b.webm``, a list in a ``--config`` file). A command returns its exit code; user errors
(:class:`~interdyn.errors.InterDynError`) are printed as one sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from docstring_parser import parse as parse_docstring
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from interdyn.errors import InputError, InterDynError


class CommandParser(ArgumentParser):
    """jsonargparse's parser, where an ``error`` handler assigned to an instance may take the message
    alone, as argparse's does (jsonargparse calls it with the exception too)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "error" and callable(value) and len(inspect.signature(value).parameters) == 1:
            handler = value

            def error(message: str, ex: Exception | None = None) -> typing.NoReturn:
                handler(message)
                raise AssertionError("an error handler must raise")  # argparse's contract: it never returns

            value = error
        super().__setattr__(name, value)


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def command_parser(
    component: Callable[..., Any],
    prog: str,
    description: str | None = None,
    multiple: Iterable[str] = (),
    positional: bool = False,
    skip: Iterable[str] = (),
) -> ArgumentParser:
    """A parser with an option for each parameter of ``component`` (a function or a dataclass).

    Types, defaults and help come from its signature and its docstring's ``Args:``; ``description``
    defaults to the docstring's first paragraph. Parameters in ``multiple`` must be ``list[X] | None``
    and take one or more values after the option. With ``positional``, parameters without a default are
    positional arguments instead of required options. Parameters in ``skip`` get no option (settings
    objects that :func:`add_settings_options` spells as flat options).
    """
    doc = parse_docstring(component.__doc__ or "")
    first_paragraph = " ".join(inspect.cleandoc(component.__doc__ or "").split("\n\n")[0].split())
    parser = CommandParser(prog=prog, description=description or first_paragraph)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    multiple = tuple(multiple)
    adder = parser.add_class_arguments if inspect.isclass(component) else parser.add_function_arguments
    adder(component, as_group=False, as_positional=positional, skip={*multiple, *skip}, fail_untyped=True)

    hints = typing.get_type_hints(component)
    flags = {name for name, hint in hints.items() if _unwrap_optional(hint) is bool}
    for action in parser._actions:  # argparse keeps no public list of its actions
        if action.dest in flags:
            action.nargs, action.const = "?", True  # `--flag` alone means `--flag true`

    helps = {p.arg_name: p.description for p in doc.params}
    defaults = {name: param.default for name, param in inspect.signature(component).parameters.items()}
    for name in multiple:
        element = typing.get_args(_unwrap_optional(hints[name]))[0]
        parser.add_argument(
            f"--{name}", type=element, nargs="+", default=defaults.get(name), help=helps.get(name)
        )
    return parser


def add_settings_options(
    parser: argparse.ArgumentParser,
    settings: type,
    defaults: Any,
    skip: Iterable[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, ...]:
    """A flat option ``--<field>`` for each field of the frozen dataclass ``settings`` (a
    :class:`~interdyn.data.clip_spec.ClipSpec`, :class:`~interdyn.models.sampling.SamplingSettings`), so that a
    setting added to the dataclass reaches the command without being declared again; help from the class
    docstring's ``Args:``. ``defaults`` is an instance of ``settings``, whose values the options default to
    (read back with :func:`settings_from`), or a phrase with ``{}`` for the field's default, e.g. "the
    .ckpt's, else {}": the options then default to ``None``, "not given" (read back with
    :func:`given_settings`). ``aliases`` lists older spellings of an option (``--steps``). Works for
    jsonargparse's parsers and the standard library's; returns the field names that got an option."""
    helps: dict[str, str] = {}
    for param in parse_docstring(settings.__doc__ or "").params:
        for name in param.arg_name.split(","):
            text = re.sub(r":\w+:`~?([^`]*)`", r"\1", (param.description or "").replace("``", ""))
            helps[name.strip()] = " ".join(text.split()).rstrip(".")
    hints = typing.get_type_hints(settings)
    names = []
    for field in dataclasses.fields(settings):
        if field.name in set(skip):
            continue
        given = isinstance(defaults, str)  # None means "not given"
        default = None if given else getattr(defaults, field.name)
        kind = _unwrap_optional(hints[field.name])
        options: dict[str, Any] = {
            "type": kind | None if given else hints[field.name]
        }  # jsonargparse checks it
        if not isinstance(parser, ArgumentParser):  # the standard library's parser wants a function
            literal = typing.get_origin(kind) is typing.Literal
            options = {"type": str, "choices": typing.get_args(kind)} if literal else {"type": kind}
        note = defaults.format(field.default) if given else default
        if given or not isinstance(parser, ArgumentParser):  # jsonargparse shows a real default itself
            options["help"] = f"{helps.get(field.name, '')} (default: {note})".strip()
        else:
            options["help"] = helps.get(field.name, "")
        spellings = [f"--{field.name}", *(f"--{a}" for a in (aliases or {}).get(field.name, ()))]
        parser.add_argument(*spellings, dest=field.name, default=default, **options)
        names.append(field.name)
    return tuple(names)


def settings_from(args: Any, base: Any) -> Any:
    """``base`` (a settings object) with each field that has an option in ``args`` (a parsed namespace of
    :func:`add_settings_options` with real defaults) set to the option's value: the one place where flat
    options become the object."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(base) if hasattr(args, f.name)}
    return dataclasses.replace(base, **values)


def given_settings(args: Any, settings: type) -> dict[str, Any]:
    """The fields of ``settings`` given as options in ``args`` (a parsed namespace of
    :func:`add_settings_options` with ``None`` defaults): ``{name: value}`` without the options left out."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(settings)}
    return {name: value for name, value in values.items() if value is not None}


def add_default_note(parser: ArgumentParser, notes: dict[str, str]) -> None:
    """Append ``(default: ...)`` to the help of the options named in ``notes``, for options whose
    ``None`` default means "decided later" (e.g. a checkpoint's setting, else the paper's)."""
    for action in parser._actions:
        if action.dest in notes:
            action.help = f"{action.help or ''} (default: {notes[action.dest]})".strip()


def run_command(
    prog: str, parser: argparse.ArgumentParser, run: Callable[[Any], Any], argv: list[str] | None
) -> int:
    """Parse ``argv`` (usage errors exit 2 with the usage, as argparse does), run, and return the exit
    code: 0, or 2 with one sentence on stderr for a user error. ``parser`` may be jsonargparse's or the
    standard library's (jsonargparse's derives from it)."""
    args = parser.parse_args(argv)
    try:
        run(args)
    except InterDynError as err:
        print(f"{prog}: error: {user_message(err)}", file=sys.stderr)
        return 2
    return 0


def call_with(function: Callable[..., Any], args: Namespace, **values: Any) -> Any:
    """Call ``function`` with the parsed options that are its parameters (``--config`` is not) and
    ``values`` (e.g. a settings object built from flat options)."""
    names = inspect.signature(function).parameters
    return function(**{name: args[name] for name in names if name in args and name not in values}, **values)


def user_message(err: BaseException) -> str:
    """The error's own sentence. An error raised in a DataLoader worker reaches the main process with the
    worker's traceback as its message; its last line holds the sentence."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = text.strip().splitlines()[-1]
        name = f"{type(err).__module__}.{type(err).__qualname__}: "
        text = last.removeprefix(name)
    return text


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(
            f"--device '{name}' is not a device (use auto, cpu, cuda or cuda:<index>)."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} was asked for, but no CUDA GPU is available.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return device
