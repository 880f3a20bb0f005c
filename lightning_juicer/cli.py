"""``python -m lightning_juicer <command>``: fit|validate|test|predict (LightningCLI), export, and the passes.

The passes and the sieve are a table of lazy ``"module:function"`` entries (``COMMANDS``), each a
``main(argv: list[str])`` with its own jsonargparse parser (``--config``, ``--print_config``,
``--help``); a new command is one entry here. Every command runs inside ``exit_on_user_error``:
bad configuration exits with status 2 and one line naming the key to fix.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.errors import ConfigError, exit_on_user_error
from lightning_juicer.models.checkpoint import EVALUATION_CHANGEABLE, RESUME_CHANGEABLE, check_checkpoint_hparams
from lightning_juicer.models.export import export_checkpoint
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.outputs import check_writable
from lightning_juicer.resume import continue_last_version, purge_duplicate_steps
from lightning_juicer.safe_load import check_lightning_checkpoint
from lightning_juicer.usage import OneLineArgumentParser, OneLineParser

# Commands outside LightningCLI: name -> "module:function" taking the remaining arguments.
COMMANDS = {
    "vision": "lightning_juicer.passes.vision:main",
    "text": "lightning_juicer.passes.text:main",
    "embeddings": "lightning_juicer.passes.embeddings:main",
    "sieve": "lightning_juicer.sieves.command:main",
    "compare": "lightning_juicer.compare.command:main",
}

# ``--ckpt_path`` values Lightning resolves itself (the file is checked once resolved, where we can).
_CKPT_ALIASES = ("last", "best", "hpc")


class JuicerCLI(LightningCLI):
    """LightningCLI over any JuicerCLIP subclass and JuicerDataModule subclass, saving the config beside the logs.

    ``--ckpt_path`` never replaces the configured model: LightningCLI would swap the model's arguments
    for the checkpoint's hyper-parameters; here a checkpoint of another model config is refused in one
    line naming the differing keys (``RESUME_CHANGEABLE`` may differ when resuming a fit,
    ``EVALUATION_CHANGEABLE`` when validating or testing: no optimizer is restored then).
    """

    _resumed: Path | None = None  # the last.ckpt ``--ckpt_path last`` resumes (set before the classes are built)

    def _check_ckpt(self, path: str | Path) -> None:
        model = self.config[self.config.subcommand].get("model")
        init_args = getattr(model, "init_args", None) or {}
        changeable = RESUME_CHANGEABLE if self.config.subcommand == "fit" else EVALUATION_CHANGEABLE
        check_checkpoint_hparams(str(path), getattr(model, "class_path", None), init_args, changeable=changeable)

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint's model arguments against the config instead of adopting them."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).is_file():
            self._check_ckpt(ckpt_path)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then refuse ``weights_only: false`` and a checkpoint that is missing, corrupt or unsafe, up front."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        if "weights_only" in config:
            if config["weights_only"] is False:
                raise ConfigError("weights_only: false would let a checkpoint run code; checkpoints are read "
                                  "with weights_only=True only (tensors and plain values)")
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in _CKPT_ALIASES and "://" not in str(ckpt_path) \
                and not str(ckpt_path).startswith("registry"):
            check_lightning_checkpoint(ckpt_path, "ckpt_path")

    def after_instantiate_classes(self) -> None:
        """Before running a subcommand, check that the log and checkpoint folders can be written."""
        super().after_instantiate_classes()
        if self.subcommand is not None:
            check_output_folders(self.trainer)

    def before_instantiate_classes(self) -> None:
        """``--ckpt_path last`` continues the newest version that has a last.ckpt, in the same log folder."""
        super().before_instantiate_classes()
        config = self.config.get(self.subcommand) if self.subcommand else None
        self._resumed = None
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            self._resumed = continue_last_version(config.get("trainer", {}).get("logger"))
            if self._resumed is not None:
                check_lightning_checkpoint(self._resumed, "ckpt_path")
                self._check_ckpt(self._resumed)

    def before_fit(self) -> None:
        """A resumed run's TensorBoard discards the steps the killed run logged after its checkpoint."""
        if self._resumed is not None:
            purge_duplicate_steps(self.trainer.logger, self._resumed)


def check_output_folders(trainer: Any) -> None:
    """Probe-write the trainer's root folder, its loggers' folders and an explicit checkpoint folder."""
    check_writable(trainer.default_root_dir, "trainer.default_root_dir")
    for logger in trainer.loggers:
        folder = getattr(logger, "save_dir", None) or getattr(logger, "root_dir", None)
        if folder:
            check_writable(folder, "trainer.logger.init_args.save_dir")
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            check_writable(callback.dirpath, "trainer.callbacks[ModelCheckpoint].init_args.dirpath")


def command(name: str) -> Any:
    """The ``main`` function of a command in ``COMMANDS`` (imported on first use)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def dispatch(args: list[str] | None, run: bool) -> Any:
    """A ``COMMANDS`` entry, ``export``, or LightningCLI for fit / validate / test / predict (``args`` None: sys.argv)."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in COMMANDS:
        return command(argv[0])(list(argv[1:]))
    if argv and argv[0] == "export":
        prog = f"{os.path.basename(sys.argv[0])} export"
        return CLI(export_checkpoint, args=argv[1:], parser_class=OneLineArgumentParser, prog=prog)
    return JuicerCLI(
        JuicerCLIP,
        JuicerDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=OneLineParser,
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None, run: bool = True) -> Any:
    """Entry point; bad configuration exits with status 2 and one line on stderr naming the key to fix."""
    return exit_on_user_error(dispatch, args, run)
