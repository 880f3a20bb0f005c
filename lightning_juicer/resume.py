"""``fit --ckpt_path last``: find the newest run version with a ``last.ckpt`` and continue logging into it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")


def newest_last_checkpoint(root_dir: str | Path) -> tuple[str, Path] | None:
    """(version folder name, checkpoint) of the newest ``<root>/*/checkpoints/last*.ckpt``, or None."""
    found = [
        (path.stat().st_mtime, path.parent.parent.name, path)
        for path in Path(root_dir).glob("*/checkpoints/*.ckpt")
        if _LAST.match(path.name)
    ]
    if not found:
        return None
    _, version, path = max(found)
    return version, path


def continue_last_version(trainer: L.Trainer) -> Path | None:
    """Point the trainer's logger (and so its checkpoint folder) at the version holding the newest last.ckpt.

    Lightning looks for ``last.ckpt`` only in the *new* version's checkpoint folder, which a versioned
    logger (TensorBoard, CSV) has just made up, so a plain ``--ckpt_path last`` would start afresh.
    A logger given an explicit ``version`` is left alone. Returns the checkpoint found, or None.
    """
    logger = trainer.logger
    if logger is None or getattr(logger, "_version", 0) is not None or not hasattr(logger, "root_dir"):
        return None
    found = newest_last_checkpoint(logger.root_dir)
    if found is None:
        return None
    version, path = found
    logger._version = int(version[len("version_"):]) if re.fullmatch(r"version_\d+", version) else version
    purge_duplicate_steps(logger, path)
    log.info("resuming %s, logging into %s", path, logger.log_dir)
    return path


def checkpoint_step(path: str | Path) -> int | None:
    """The first step a run resumed from this checkpoint logs at: its ``global_step``.

    (The saved ``_batches_that_stepped`` is one lower when the checkpoint was written at a batch end,
    before Lightning counted that batch.)
    """
    step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return None if step is None else int(step)


def purge_duplicate_steps(logger: object, path: str | Path) -> None:
    """Make a TensorBoard logger discard the events the killed run logged after the checkpoint.

    The run continues logging from the checkpoint's step into the same version, so the steps between
    the checkpoint and the kill would appear twice. ``SummaryWriter(purge_step=s)`` writes a
    ``SessionLog.START`` at ``s``, which TensorBoard's readers take as "drop earlier events at steps >= s".
    """
    if not isinstance(logger, TensorBoardLogger) or logger._experiment is not None:
        return
    step = checkpoint_step(path)
    if step is not None:
        logger._kwargs["purge_step"] = step
