"""The ``interdyn`` command and its subcommands: cli.py (fit / test / ..., LightningCLI), generate, export,
evaluate, the parsers they share and reading run configs."""
