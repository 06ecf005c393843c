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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``interdyn`` console script."""
    # Quieter startup logs from the hub stack; the user's settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen SVD parts are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    try:
        InterDynCLI(
            InterDynModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except InterDynError as err:
        print(f"interdyn: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
