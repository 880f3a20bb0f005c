"""Non-finite loss guard: stop the run naming the step and the batch's sample keys, or skip the batch (counted)."""

from __future__ import annotations

import logging

import lightning as L
import torch

NONFINITE_POLICIES = ("raise", "skip")
SHOWN_KEYS = 32

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite."""


def guard_loss(module: L.LightningModule, loss: torch.Tensor, batch: dict, policy: str) -> torch.Tensor | None:
    """``loss`` if finite on every rank; else raise NonFiniteLossError (``raise``) or return None to skip (``skip``).

    The decision is reduced over ranks, so all ranks skip (or stop) together and DDP never waits on one.
    Skipped batches count their samples as ``nonfinite_loss`` drops of the DataModule (manifest, logs).
    """
    trainer = module.trainer
    bad = not bool(torch.isfinite(loss.detach()).all())
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return loss
    keys = list(batch.get("key") or [])
    step, rank = trainer.global_step, trainer.global_rank
    shown = ", ".join(keys[:SHOWN_KEYS]) + (f" ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")
    where = f"at step {step} (rank {rank}, loss {loss.detach().float().item()}) on the batch with keys [{shown}]"
    if policy == "raise":
        log.error("non-finite loss at step %d, rank %d; all batch keys: %s", step, rank, keys)
        raise NonFiniteLossError(
            f"non-finite loss {where}; set model.init_args.nonfinite_loss skip to skip such batches (counted)"
        )
    log.warning("skipping the batch: non-finite loss %s", where)
    drops = getattr(trainer.datamodule, "drops", None)
    if drops is not None:
        drops["nonfinite_loss"] += len(keys) or int(batch["image"].shape[0])
    return None
