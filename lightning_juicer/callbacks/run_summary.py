"""Run bookkeeping: drop counts to the logger, a ``manifest.json`` beside the logs, and a closing summary."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lightning_juicer.data.drops import DROP_REASONS, FALLBACK_REASONS


class RunSummary(L.Callback):
    """Logs drops by reason during training; at the end of fit writes the manifest and prints where things are."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Log running drop totals of this rank (``data/dropped_<reason>``)."""
        if not trainer._logger_connector.should_update_logs:
            return
        drops = _settled(trainer.datamodule)
        if drops:
            for reason, count in drops.items():
                pl_module.log(f"data/dropped_{reason}", float(count), on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Sum drops over ranks, write ``manifest.json`` and print log dir and checkpoint paths."""
        drops = _settled(trainer.datamodule) or {}
        reasons = DROP_REASONS + FALLBACK_REASONS
        counts = torch.tensor([float(drops.get(r, 0)) for r in reasons], device=pl_module.device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank must ask
        if not trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        manifest = {
            "global_step": trainer.global_step,
            "images_trained": trainer.global_step * getattr(datamodule, "batch_size", 0) * trainer.world_size
            * trainer.accumulate_grad_batches,
            "dropped": {r: int(c) for r, c in zip(reasons, counts.tolist()) if c and r in DROP_REASONS},
            "random_fallbacks": {r: int(c) for r, c in zip(reasons, counts.tolist()) if c and r in FALLBACK_REASONS},
        }
        (log_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        checkpoint = trainer.checkpoint_callback
        last = getattr(checkpoint, "last_model_path", "") if checkpoint else ""
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        lines = [
            f"logs:        {log_dir}   (tensorboard --logdir {log_dir.parent})",
            f"checkpoint:  {last or best or 'none saved'}",
            f"manifest:    {log_dir / 'manifest.json'}  dropped={manifest['dropped'] or 0}",
        ]
        print("\n".join(["", "run finished", *lines]), flush=True)


def _settled(datamodule) -> dict | None:
    """The DataModule's drop totals, with the counts it keeps on the device folded in (a sync: logging steps only)."""
    settle = getattr(datamodule, "settle_counts", None)
    return settle() if settle is not None else getattr(datamodule, "drops", None)
