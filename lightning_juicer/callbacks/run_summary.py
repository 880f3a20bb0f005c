"""Run bookkeeping: drop counts to the logger, a ``manifest.json`` beside the logs, and a closing summary."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from lightning_juicer.data.drops import DropLedger
from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.models.module import JuicerCLIP


def rank_drops(trainer: L.Trainer, pl_module: L.LightningModule) -> DropLedger:
    """This rank's drop totals: the DataModule's ledger plus the module's (its device counts folded in: a sync)."""
    ledgers = []
    if isinstance(trainer.datamodule, JuicerDataModule):
        ledgers.append(trainer.datamodule.drops)
    if isinstance(pl_module, JuicerCLIP):
        ledgers.append(pl_module.settle_drops())
    return DropLedger.total(ledgers)


class RunSummary(L.Callback):
    """Logs drops by reason during training; at the end of fit writes the manifest and prints where things are."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """On the steps Lightning writes logs (``trainer.log_every_n_steps``), log this rank's drop totals
        (``data/dropped_<reason>``); reading the device counts is a sync, so not on the other steps."""
        if trainer.global_step % trainer.log_every_n_steps != 0:
            return
        for reason, count in rank_drops(trainer, pl_module).items():
            if count:
                pl_module.log(f"data/dropped_{reason}", float(count), on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Sum drops over ranks, write ``manifest.json`` and print log dir and checkpoint paths."""
        drops = DropLedger.total([rank_drops(trainer, pl_module)], trainer.strategy.reduce, pl_module.device)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank must ask
        if not trainer.is_global_zero:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        batch_size = datamodule.batch_size if isinstance(datamodule, JuicerDataModule) else 0
        manifest = {
            "global_step": trainer.global_step,
            "images_trained": trainer.global_step * batch_size * trainer.world_size * trainer.accumulate_grad_batches,
            "dropped": drops.dropped,
            "random_fallbacks": drops.fallbacks,
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
