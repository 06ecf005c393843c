"""The ``interdyn`` command: LightningCLI (fit / validate / test / predict) over :class:`InterDynModule`, or over the
module a config names (``model: class_path: ...``: the Wan2.2 backbone's
:class:`~interdyn.training.wan_module.InterDynWanModule`, see :func:`names_model_class`).

Any LightningDataModule can be named with ``--data.class_path``; configs live in ``configs/``.
User errors (missing weights, bad paths, batches that break the contract) are printed as one
paragraph with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from typing import Any

import lightning as L
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from interdyn.callbacks.interrupt import LastCheckpointOnInterrupt
from interdyn.callbacks.progress import resume_aware
from interdyn.callbacks.timing import COMMAND_STARTED, PhaseTimer
from interdyn.commands.parsers import user_message
from interdyn.commands.spelling import nested_clip_options, nested_model_options, option_values, read_yaml
from interdyn.data.shards import CONTROL_CHANNELS
from interdyn.errors import ConfigError, InterDynError
from interdyn.models.sampling import DEFAULT_SAMPLING
from interdyn.training.checkpoint import load_checkpoint
from interdyn.training.checkpoint_io import secure_strategy
from interdyn.training.module import InterDynModule
from interdyn.training.resume import find_last_checkpoint, searched_folders
from interdyn.utils.timing import process_age


def control_channels(data: L.LightningDataModule) -> int:
    """The branch's control channels for the control ``data`` produces (its ``control_channels``; the
    paper's binary masks, 3 channels, for a DataModule that does not say)."""
    return getattr(data, "control_channels", CONTROL_CHANNELS["binary"])


def fps_id(data: L.LightningDataModule) -> float:
    """SVD's fps conditioning for the clip rate of ``data``: fps - 1, SVD's convention (the paper's
    "7 FPS" is fps id 6), with the rate read from the data's clip (``data.clip``, a
    :class:`~interdyn.data.clip_spec.ClipSpec`; a DataModule without one may name an ``fps``
    hyper-parameter); the default for a DataModule without a target rate (e.g. a fixed stride)."""
    clip = getattr(data, "clip", None)
    hparams = getattr(data, "hparams", None) or {}
    fps = getattr(clip, "fps", None) if clip is not None else hparams.get("fps")
    return DEFAULT_SAMPLING.fps_id if fps is None else fps - 1


class RunConfigSaver(SaveConfigCallback):
    """Saves the run's ``config.yaml`` in the logger's run folder, as Lightning does. Without a logger
    (``--trainer.logger false``) Lightning would write it into ``default_root_dir``, the working directory
    unless set. Here ``fit`` writes it beside the checkpoints instead: the checkpoint callback's
    ``dirpath``, or ``<default_root_dir>/checkpoints`` where that callback puts them without one. The
    other stages keep Lightning's behaviour, so that a test never overwrites its training run's config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._folder: str | None = None  # where fit writes the config without a logger

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Chooses the folder (the same on every rank: it comes from the config), then saves."""
        checkpoint = trainer.checkpoint_callback
        if stage == "fit" and self.save_to_log_dir and trainer.logger is None and checkpoint is not None:
            dirpath = getattr(checkpoint, "dirpath", None)
            self._folder = str(dirpath) if dirpath else os.path.join(trainer.default_root_dir, "checkpoints")
            self.save_to_log_dir = False  # written by save_config below, on rank 0
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Writes ``config.yaml`` into the chosen folder (rank 0 only; Lightning calls it there)."""
        if self._folder is None:
            return
        get_filesystem(self._folder).makedirs(self._folder, exist_ok=True)
        path = os.path.join(self._folder, self.config_filename)
        self.parser.save(
            self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
        )


class InterDynCLI(LightningCLI):
    """LightningCLI with InterDyn's module and any DataModule subclass.

    Checkpoints are always loaded weights-only (:mod:`interdyn.training.checkpoint`); ``--weights_only false`` is
    refused. ``--ckpt_path last`` resumes the newest last checkpoint of any earlier run of the config
    (:mod:`interdyn.training.resume`); finding none is an error rather than a fresh start.
    The model's settings that must agree with the data follow it: ``conditioning_channels`` from the
    control type and ``fps_id`` from the clip rate (set them through ``data``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.model_class is InterDynModule and not self.subclass_mode_model:
            for function, target in (
                (control_channels, "conditioning_channels"),
                (fps_id, "sampling.fps_id"),
            ):
                parser.link_arguments("data", f"model.{target}", compute_fn=function, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's parsing, with the clip settings that a DataModule once took flat moved into its
        ``clip`` group (``--data.init_args.num_frames`` -> ``--data.init_args.clip.num_frames``; a config
        file that spells them flat is one sentence: :func:`~interdyn.commands.spelling.nested_clip_options`),
        and the module's settings moved into theirs (``--model.num_inference_steps`` ->
        ``--model.sampling.num_inference_steps``: :func:`~interdyn.commands.spelling.nested_model_options`)."""
        if args is None:
            sys.argv[1:] = nested_model_options(nested_clip_options(sys.argv[1:]))
        elif isinstance(args, list):
            args = nested_model_options(nested_clip_options(args))
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's reading of a local ``--ckpt_path``'s hyper-parameters into the model's config, with
        the checkpoint read by :func:`load_checkpoint` (weights-only and memory-mapped: the optimizer state is
        never read) and anything unreadable reported in one sentence."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        if self.config[subcommand].get("weights_only") is False:
            raise ConfigError(
                "--weights_only false is not supported: interdyn loads checkpoints weights-only (tensors and "
                "plain values), so that a checkpoint can never run code"
            )
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or "://" in str(ckpt_path):
            return  # resolved by the trainer; URLs and remote files are read there
        hparams = dict(load_checkpoint(ckpt_path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        secure_strategy(trainer.strategy, trainer)
        trainer.callbacks.append(LastCheckpointOnInterrupt())
        trainer.callbacks.append(PhaseTimer())
        if trainer.progress_bar_callback is not None:
            resume_aware(trainer.progress_bar_callback)
        return trainer

    def _check_checkpoint_arguments(self) -> None:
        """Resolve ``--ckpt_path last`` to a file (:mod:`interdyn.training.resume`): the newest last checkpoint of any
        earlier run of this config's logger name, or of the checkpoint folder the config fixes."""
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") != "last":
            return
        if not any(isinstance(cb, (ModelCheckpoint, OnExceptionCheckpoint)) for cb in self.trainer.callbacks):
            raise ConfigError(
                "--ckpt_path last: this config has no ModelCheckpoint callback, so there is no last checkpoint "
                "of it to find; pass the path of a .ckpt file (e.g. runs/<name>/version_<n>/checkpoints/last.ckpt)"
            )
        found = find_last_checkpoint(self.trainer)
        if found is None:
            raise ConfigError(
                f"--ckpt_path last: there is no last checkpoint to resume from (none in {searched_folders(self.trainer)}); "
                "drop --ckpt_path to start a new run, or pass the path of a .ckpt file"
            )
        rank_zero_info(f"--ckpt_path last: {found}")
        arguments["ckpt_path"] = found

    def before_fit(self) -> None:
        self._check_checkpoint_arguments()

    def before_validate(self) -> None:
        self._check_checkpoint_arguments()

    def before_test(self) -> None:
        self._check_checkpoint_arguments()

    def before_predict(self) -> None:
        self._check_checkpoint_arguments()


# The commands outside LightningCLI: (module, function, summary). Each function parses its arguments with
# jsonargparse (interdyn.commands.parsers), prints user errors as one sentence and returns the exit code.
COMMANDS = {
    "generate": (
        "interdyn.commands.generate",
        "generate_main",
        "videos from an image and driver masks, or a clip folder",
    ),
    "app": ("interdyn.app.main", "app_main", "a browser app: paint a mask, drag it along a path, generate"),
    "export": (
        "interdyn.commands.export",
        "export_main",
        "a training checkpoint's branch as a diffusers folder",
    ),
    "prompt": (
        "interdyn.commands.prompt",
        "prompt_main",
        "encode a text prompt once into the Wan backbone's prompt embedding file",
    ),
    "evaluate": (
        "interdyn.commands.evaluate",
        "evaluate_main",
        "score a folder of generated videos against a shard split",
    ),
    "weights": (
        "interdyn.commands.evaluate",
        "weights_main",
        "fetch metric weights (weights fetch i3d: FVD/KVD's I3D)",
    ),
}


def more_commands() -> str:
    """The ``--help`` lines of the commands outside LightningCLI."""
    lines = [f"  {name:<19} {summary} (interdyn {name} --help)" for name, (_, _, summary) in COMMANDS.items()]
    lines.append(
        "  world fit           train the built-in world's own small SVD "
        "(interdyn world fit --config configs/world/vae.yaml)"
    )
    return "\nother commands:\n" + "\n".join(lines) + "\n"


def check_config_files(argv: list[str]) -> None:
    """Raise :class:`ConfigError` for a ``--config`` file that holds no settings (empty or only comments),
    is not a mapping or is not YAML: the parser would say only "Unexpected config" or quote YAML's error."""
    values = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for value in values:
        path = os.path.expanduser(value)
        if not os.path.isfile(path):
            continue  # a YAML string, or a missing file the parser names
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"the config {value} is not valid YAML ({' '.join(str(err).split())[:300]})"
            ) from None
        if content is None:
            raise ConfigError(
                f"the config {value} holds no settings (it is empty or only comments); give a config with "
                "trainer:, model: and data: sections, such as configs/tiny.yaml"
            )
        if not isinstance(content, dict):
            raise ConfigError(
                f"the config {value} is not a mapping of settings (it holds a {type(content).__name__}); its top "
                "level must be keys such as trainer:, model: and data:"
            )


def names_model_class(argv: list[str]) -> bool:
    """Whether the command names the module's class: a ``--config`` file whose ``model:`` section has a
    ``class_path``, a ``--model`` / ``--model.class_path`` option, or a ``--ckpt_path`` file written by such a
    run (its hyper-parameters record ``_class_path``). The CLI then takes that LightningModule (subclass
    mode); without one it is :class:`InterDynModule` with its settings linked to the data, as always."""
    for option, value in option_values(argv, ("--config", "--model", "--model.class_path", "--ckpt_path")):
        if option == "--config":
            content = read_yaml(value)
            model = content.get("model") if isinstance(content, dict) else None
            if isinstance(model, dict) and "class_path" in model:
                return True
        elif option == "--ckpt_path":
            if value.endswith(".ckpt") and os.path.isfile(os.path.expanduser(value)):
                try:
                    hparams = load_checkpoint(value).get("hyper_parameters") or {}
                except InterDynError:  # unreadable or refused: the run's own checks say so in their order
                    continue
                if "_class_path" in hparams:
                    return True
        else:
            return True
    return False


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``interdyn`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    # the run's time table counts from the command's start (its imports too, when run as a command)
    COMMAND_STARTED[:] = [time.perf_counter() - (process_age() if args is None else 0.0)]
    cli_args = None if args is None else argv  # LightningCLI reads sys.argv itself when args is None
    # Quieter startup logs from the hub stack; the user's settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen SVD parts are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    if argv and argv[0] in COMMANDS:
        module, function, _ = COMMANDS[argv[0]]
        sys.exit(getattr(importlib.import_module(module), function)(argv[1:]))
    # The world's own SVD stages (interdyn.world): any LightningModule named by the config's class_path.
    world = bool(argv) and argv[0] == "world"
    if argv in (["-h"], ["--help"]):
        try:
            InterDynCLI(InterDynModule, L.LightningDataModule, subclass_mode_data=True, args=cli_args)
        finally:
            print(more_commands())
    try:
        check_config_files(argv)
        subclass = world or names_model_class(argv)
        InterDynCLI(
            L.LightningModule if subclass else InterDynModule,
            L.LightningDataModule,
            subclass_mode_model=subclass,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            args=argv[1:] if world else cli_args,
        )
    except InterDynError as err:
        print(f"interdyn: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
