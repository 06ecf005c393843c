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
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
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
) -> ArgumentParser:
    """A parser with an option for each parameter of ``component`` (a function or a dataclass).

    Types, defaults and help come from its signature and its docstring's ``Args:``; ``description``
    defaults to the docstring's first paragraph. Parameters in ``multiple`` must be ``list[X] | None``
    and take one or more values after the option. With ``positional``, parameters without a default are
    positional arguments instead of required options.
    """
    doc = parse_docstring(component.__doc__ or "")
    first_paragraph = " ".join(inspect.cleandoc(component.__doc__ or "").split("\n\n")[0].split())
    parser = CommandParser(prog=prog, description=description or first_paragraph)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    multiple = tuple(multiple)
    adder = parser.add_class_arguments if inspect.isclass(component) else parser.add_function_arguments
    adder(component, as_group=False, as_positional=positional, skip=set(multiple), fail_untyped=True)

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


def call_with(function: Callable[..., Any], args: Namespace) -> Any:
    """Call ``function`` with the parsed options that are its parameters (``--config`` is not)."""
    names = inspect.signature(function).parameters
    return function(**{name: args[name] for name in names if name in args})


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
