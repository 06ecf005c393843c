"""The ``interdyn`` command: LightningCLI (fit / validate / test / predict) over :class:`InterDynModule`.

Any LightningDataModule can be named with ``--data.class_path``; configs live in ``configs/``.
User errors (missing weights, bad paths, batches that break the contract) are printed as one
paragraph with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

from interdyn.errors import InterDynError
from interdyn.module import InterDynModule


class InterDynCLI(LightningCLI):
    """LightningCLI with InterDyn's module and any DataModule subclass."""


MORE_COMMANDS = """
other commands:
  generate            videos from an image and driver masks, or a clip folder (interdyn generate --help)
  export              a training checkpoint's branch as a diffusers folder (interdyn export --help)
  evaluate            score a folder of generated videos against a shard split (interdyn evaluate --help)
  weights fetch i3d   download and convert the FVD/KVD I3D weights
"""


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``interdyn`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    cli_args = None if args is None else argv  # LightningCLI reads sys.argv itself when args is None
    # Quieter startup logs from the hub stack; the user's settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen SVD parts are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
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
            print(f"interdyn: error: {err}", file=sys.stderr)
            sys.exit(2)
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
        print(f"interdyn: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
