"""Progress of a pass: Lightning's tqdm bar on a terminal, plain periodic log lines when stdout is not one (on stderr).

A bar redrawn with carriage returns floods a redirected log (a cluster job's output file) with
thousands of partial lines; there the pass logs one line every ``every`` seconds instead:
``vision pass: 120/400 batches, 3/10 shards, 812.4 samples/s``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar


class ShardProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar labelled with the pass and with the batch total of this rank's pending shards."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    @property
    def predict_description(self) -> str:
        """The bar's label."""
        return self.label

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        """This rank's batch count from the shard sizes, else Lightning's (unknown for an iterable dataset)."""
        estimate = self.trainer.datamodule.num_batches
        return estimate if estimate is not None else super().total_predict_batches_current_dataloader


class LogProgress(Callback):
    """One plain log line every ``every`` seconds (and at the end): batches, finished shards, samples/s."""

    def __init__(self, label: str, every: float = 30.0) -> None:
        self.label = label
        self.every = every
        self.batches = self.samples = self.shards = 0
        self.start = self.last = 0.0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.last = time.monotonic()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.batches += 1
        self.samples += len(batch["key"])
        self.shards += bool(batch["last"])
        if time.monotonic() - self.last >= self.every:
            self.report(trainer)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer)

    def report(self, trainer: L.Trainer) -> None:
        """Log where this rank stands."""
        self.last = time.monotonic()
        data = trainer.datamodule
        total = data.num_batches
        speed = self.samples / max(self.last - self.start, 1e-9)
        print(f"{self.label} (rank {trainer.global_rank}): {self.batches}/{total if total is not None else '?'} "
              f"batches, {self.shards}/{len(data.pending)} shards, {speed:.1f} samples/s", file=sys.stderr, flush=True)


def progress_callbacks(label: str, enabled: bool) -> tuple[list[Callback], bool]:
    """The progress callbacks of a pass and whether Lightning's own bar is on (a TTY gets the bar)."""
    if not enabled:
        return [], False
    if sys.stdout.isatty():
        return [ShardProgressBar(label)], True
    return [LogProgress(label)], False
