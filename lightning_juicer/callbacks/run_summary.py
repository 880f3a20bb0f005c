"""Run bookkeeping: drop counts to the logger, progress lines for redirected logs, a final ``last.ckpt``, a
``manifest.json`` beside the logs, and a closing summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lightning_juicer.data.drops import DropLedger
from lightning_juicer.data.datamodule import JuicerDataModule
from lightning_juicer.errors import ConfigError
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
    """Logs drops by reason during training; at the end of fit writes the manifest and prints where things are.

    Args:
        progress_every_n_steps: when stderr is not a terminal (a redirected log, where progress bars are a
            flood of carriage returns), one line ``step N/T (p %) loss x elapsed`` every this many steps
            (reading the loss is a sync on those steps only); None = ``trainer.log_every_n_steps``, 0 = never.
    """

    def __init__(self, progress_every_n_steps: int | None = None) -> None:
        if progress_every_n_steps is not None and progress_every_n_steps < 0:
            raise ConfigError("trainer.callbacks[RunSummary].init_args.progress_every_n_steps: must be >= 0")
        self.progress_every_n_steps = progress_every_n_steps
        self._started = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """On the steps Lightning writes logs (``trainer.log_every_n_steps``), log this rank's drop totals
        (``data/dropped_<reason>``; reading the device counts is a sync, so not on the other steps); print
        a progress line into redirected logs."""
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0:
            for reason, count in rank_drops(trainer, pl_module).items():
                if count:
                    pl_module.log(f"data/dropped_{reason}", float(count), on_step=True, on_epoch=False)
        every = trainer.log_every_n_steps if self.progress_every_n_steps is None else self.progress_every_n_steps
        if every and step % every == 0 and trainer.is_global_zero and not sys.stderr.isatty():
            total = int(trainer.estimated_stepping_batches)
            loss = outputs.get("loss") if isinstance(outputs, dict) else None
            shown = f"  loss {float(loss):.4f}" if loss is not None else ""
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self._started))
            print(f"step {step}/{total} ({100 * step / max(total, 1):.0f} %){shown}  elapsed {elapsed}", flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        """Make ``last.ckpt`` the final state (a ``every_n_train_steps`` checkpoint may have saved it earlier)."""
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last is True and checkpoint.last_model_path:
            trainer.save_checkpoint(checkpoint.last_model_path)
            rank_zero_info(f"saved the final state (step {trainer.global_step}) to {checkpoint.last_model_path}")

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
