"""The ``interdyn`` command: LightningCLI (fit / validate / test / predict) over :class:`InterDynModule`.

Any LightningDataModule can be named with ``--data.class_path``; configs live in ``configs/``.
User errors (missing weights, bad paths, batches that break the contract) are printed as one
paragraph with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from interdyn.checkpoints import LastCheckpointOnInterrupt, load_checkpoint, secure_strategy
from interdyn.errors import ConfigError, InterDynError
from interdyn.module import InterDynModule


class InterDynCLI(LightningCLI):
    """LightningCLI with InterDyn's module and any DataModule subclass.

    Checkpoints are always loaded weights-only (:mod:`interdyn.checkpoints`); ``--weights_only false`` is
    refused, and ``--ckpt_path last`` with no last checkpoint is an error rather than a fresh start.
    """

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a local --ckpt_path's hyper-parameters here (weights-only); what it cannot
        # read becomes the loader's one sentence instead of an unpickler traceback.
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("weights_only") is False:
            raise ConfigError(
                "--weights_only false is not supported: interdyn loads checkpoints weights-only (tensors and "
                "plain values), so that a checkpoint can never run code"
            )
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
            load_checkpoint(self.config[self.config.subcommand].get("ckpt_path"))
            raise

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        secure_strategy(trainer.strategy)
        trainer.callbacks.append(LastCheckpointOnInterrupt())
        return trainer

    def _check_checkpoint_arguments(self) -> None:
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            found = _last_checkpoints(self.trainer)
            if not found:
                raise ConfigError(
                    "--ckpt_path last: there is no last checkpoint to resume from (none in "
                    f"{_checkpoint_dirs(self.trainer) or 'any checkpoint folder'}); drop --ckpt_path to start "
                    "a new run, or pass the path of a .ckpt file"
                )

    def before_fit(self) -> None:
        self._check_checkpoint_arguments()

    def before_validate(self) -> None:
        self._check_checkpoint_arguments()

    def before_test(self) -> None:
        self._check_checkpoint_arguments()

    def before_predict(self) -> None:
        self._check_checkpoint_arguments()


def user_message(err: BaseException) -> str:
    """The error's own sentence. An error raised in a DataLoader worker reaches the main process with the
    worker's traceback as its message; its last line holds the sentence."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = text.strip().splitlines()[-1]
        name = f"{type(err).__module__}.{type(err).__qualname__}: "
        text = last.removeprefix(name)
    return text


def _last_checkpoints(trainer: L.Trainer) -> list[str]:
    """The files Lightning would consider for ``ckpt_path="last"`` (``last*.ckpt`` of every
    ModelCheckpoint's folder, and on-exception checkpoints), those that exist."""
    from lightning.fabric.utilities.cloud_io import get_filesystem
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    candidates = {cb.ckpt_path for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint)}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            candidates |= callback._find_last_checkpoints(trainer)
    return sorted(p for p in candidates if p and get_filesystem(p).exists(p))


def _checkpoint_dirs(trainer: L.Trainer) -> str:
    from lightning.pytorch.callbacks import ModelCheckpoint

    dirs = [
        cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath
    ]
    return ", ".join(str(d) for d in dirs)


MORE_COMMANDS = """
other commands:
  generate            videos from an image and driver masks, or a clip folder (interdyn generate --help)
  app                 a browser app: paint a mask, drag it along a path, generate (interdyn app --help)
  export              a training checkpoint's branch as a diffusers folder (interdyn export --help)
  evaluate            score a folder of generated videos against a shard split (interdyn evaluate --help)
  weights fetch i3d   download and convert the FVD/KVD I3D weights
  world fit           train the built-in world's own small SVD (interdyn world fit --config configs/world/vae.yaml)
"""


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``interdyn`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    cli_args = None if args is None else argv  # LightningCLI reads sys.argv itself when args is None
    # Quieter startup logs from the hub stack; the user's settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen SVD parts are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    if argv and argv[0] == "app":
        from interdyn.app.main import app_main

        sys.exit(app_main(argv[1:]))  # prints user errors as one sentence and returns 2
    if argv and argv[0] in ("generate", "export"):
        if argv[0] == "generate":
            from interdyn.generate import generate_main as command
        else:
            from interdyn.export import export_main as command
        sys.exit(command(argv[1:]))  # both print user errors as one sentence and return 2
    if argv and argv[0] in ("evaluate", "weights"):
        from interdyn.evaluate import main as evaluate_main
        from interdyn.evaluate import weights_main

        try:
            sys.exit((evaluate_main if argv[0] == "evaluate" else weights_main)(argv[1:]))
        except InterDynError as err:
            print(f"interdyn: error: {user_message(err)}", file=sys.stderr)
            sys.exit(2)
    if argv and argv[0] == "world":
        # The world's own SVD stages (interdyn.world): any LightningModule named by the config's class_path.
        try:
            InterDynCLI(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=argv[1:],
            )
        except InterDynError as err:
            print(f"interdyn: error: {user_message(err)}", file=sys.stderr)
            sys.exit(2)
        return
    if argv in (["-h"], ["--help"]):
        try:
            InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, args=cli_args)
        finally:
            print(MORE_COMMANDS)
    try:
        InterDynCLI(
            InterDynModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=cli_args,
        )
    except InterDynError as err:
        print(f"interdyn: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
