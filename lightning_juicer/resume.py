"""``fit --ckpt_path last``: find the newest run version with a ``last.ckpt`` and continue logging into it.

Lightning looks for ``last.ckpt`` only in the *new* version's checkpoint folder, which a versioned logger
(TensorBoard, CSV) makes up, so a plain ``--ckpt_path last`` would start afresh. Here the logger's
configured ``version`` is set to the version holding the newest ``last.ckpt`` before the logger is built
(``continue_last_version``, on the parsed config), and the TensorBoard events the killed run wrote after
that checkpoint are marked for discarding (``purge_duplicate_steps``). Public APIs only.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

_LAST = re.compile(r"^last(-v?\d+)?\.ckpt$")
_VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")


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


def continue_last_version(logger_config: Any) -> Path | None:
    """Set a versioned logger's config (``trainer.logger`` as parsed: ``class_path`` + ``init_args``) to the
    version holding the newest last.ckpt under its ``save_dir/name``; returns that checkpoint, or None.

    A logger configured with an explicit ``version``, or not a TensorBoard/CSV logger, is left alone.
    """
    class_path = getattr(logger_config, "class_path", None) or ""
    init_args = getattr(logger_config, "init_args", None)
    if class_path.rsplit(".", 1)[-1] not in _VERSIONED_LOGGERS or init_args is None:
        return None
    if init_args.get("version") is not None or not init_args.get("save_dir"):
        return None
    found = newest_last_checkpoint(Path(init_args["save_dir"]) / (init_args.get("name") or ""))
    if found is None:
        return None
    version, path = found
    init_args["version"] = int(version[len("version_"):]) if re.fullmatch(r"version_\d+", version) else version
    log.info("resuming %s, logging into version %s", path, init_args["version"])
    return path


def checkpoint_step(path: str | Path) -> int | None:
    """The first step a run resumed from this checkpoint logs at: its ``global_step``.

    (The saved ``_batches_that_stepped`` is one lower when the checkpoint was written at a batch end,
    before Lightning counted that batch.)
    """
    step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return None if step is None else int(step)


def purge_duplicate_steps(logger: object, path: str | Path) -> None:
    """Make TensorBoard discard the events the killed run logged after the checkpoint.

    The run continues logging from the checkpoint's step into the same version, so the steps between
    the checkpoint and the kill would appear twice. A ``SummaryWriter(purge_step=s)`` opened (and closed)
    in the log folder before the logger's own writes a ``SessionLog.START`` at ``s``, which TensorBoard's
    readers take as "drop earlier events at steps >= s".
    """
    if not isinstance(logger, TensorBoardLogger):
        return
    step = checkpoint_step(path)
    if step is not None:
        from torch.utils.tensorboard import SummaryWriter

        SummaryWriter(logger.log_dir, purge_step=step).close()
