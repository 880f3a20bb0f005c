"""``python -m lightning_juicer fit|validate|test --config X.yaml`` (LightningCLI) and ``export``, with one-line config errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.errors import ConfigError
from lightning_juicer.models.checkpoint import check_checkpoint_hparams
from lightning_juicer.models.export import export_checkpoint
from lightning_juicer.models.module import JuicerCLIP
from lightning_juicer.resume import continue_last_version


class JuicerCLI(LightningCLI):
    """LightningCLI over any JuicerCLIP subclass and JuicerDataModule subclass, saving the config beside the logs.

    ``--ckpt_path`` never replaces the configured model: LightningCLI would swap the model's arguments
    for the checkpoint's hyper-parameters; here a checkpoint of another model config is refused in one
    line naming the differing keys (``models.checkpoint.RESUME_CHANGEABLE`` may differ).
    """

    def _check_ckpt(self, path: str | Path) -> None:
        model = self.config[self.config.subcommand].get("model")
        init_args = getattr(model, "init_args", None) or {}
        check_checkpoint_hparams(str(path), getattr(model, "class_path", None), init_args)

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint's model arguments against the config instead of adopting them."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and Path(ckpt_path).is_file():
            self._check_ckpt(ckpt_path)

    def before_fit(self) -> None:
        """``--ckpt_path last`` continues the newest version that has a last.ckpt, in the same log folder."""
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            found = continue_last_version(self.trainer)
            if found is not None:
                self._check_ckpt(found)


def find_config_error(exn: BaseException | None) -> ConfigError | None:
    """The ConfigError behind an exception (jsonargparse and Lightning wrap errors raised in __init__ or hooks)."""
    while exn is not None:
        if isinstance(exn, ConfigError):
            return exn
        exn = exn.__cause__ or exn.__context__
    return None


def dispatch(args: list[str], run: bool) -> Any:
    """The ``export`` subcommand, or LightningCLI for fit / validate / test / predict."""
    if args and args[0] == "export":
        return CLI(export_checkpoint, args=args[1:])
    return JuicerCLI(
        JuicerCLIP,
        JuicerDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None, run: bool = True) -> Any:
    """Entry point; bad configuration exits with status 2 and one line on stderr naming the key to fix."""
    try:
        return dispatch(sys.argv[1:] if args is None else args, run)
    except Exception as exn:
        cause = find_config_error(exn)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
