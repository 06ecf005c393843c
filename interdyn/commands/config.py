"""Reading the configs of ``interdyn fit`` as ``interdyn fit`` reads them, without building anything.

Tools that need a run's settings (the latent cache, tests of the shipped configs) get them from
:class:`~interdyn.commands.cli.InterDynCLI`'s own parser: ``--config`` files overlay each other in order (a
``class_path`` section is merged as LightningCLI merges it), values are type-checked and defaults are
filled in. No model, DataModule or trainer is created and no seed is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
import yaml
from jsonargparse import ArgumentError

from interdyn.commands.cli import InterDynCLI, names_model_class
from interdyn.errors import ConfigError
from interdyn.training.module import InterDynModule


class _ParseOnly(InterDynCLI):
    """The CLI stopped after parsing: no seed, no instantiation."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse ``args`` only. LightningCLI warns when it gets ``args`` while the process has command-line
        arguments, which are always there when a tool (``make latents``) reads a config."""
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv = argv


def read_config(
    configs: Sequence[str | os.PathLike[str]], args: Sequence[str] = (), world: bool = False
) -> dict[str, Any]:
    """The settings ``interdyn fit --config configs[0] --config configs[1] ... *args`` would run with, as the
    plain dict of a config file that holds them all: ``model`` (the module's arguments), ``data`` (``class_path`` and ``init_args``),
    ``trainer``, ``optimizer``... A config that names its module's class (``model: class_path:``, as the
    Wan backbone's and the world's configs do) is read as the command reads it, for that class; ``world``
    forces this reading (``interdyn world fit``'s). Raises :class:`ConfigError` with the parser's reason when the
    configs do not parse (a missing file, an unknown key, a wrong type)."""
    argv = [arg for path in configs for arg in ("--config", os.fspath(path))] + list(args)
    subclass = world or names_model_class(argv)
    try:
        cli = _ParseOnly(
            L.LightningModule if subclass else InterDynModule,
            L.LightningDataModule,
            subclass_mode_model=subclass,
            subclass_mode_data=True,
            run=False,
            args=argv,
            save_config_callback=None,
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as err:
        reason = " ".join(str(err).split())[:400] or type(err).__name__
        raise ConfigError(f"cannot read the configs {[os.fspath(p) for p in configs]}: {reason}") from None
    # the parser's own YAML dump: plain values only (lists, strings), as a config file would hold them
    return yaml.safe_load(cli.parser.dump(cli.config, skip_unset=False))
