"""Images/s and image tokens/s of training, with Lightning's ``Throughput`` and one device sync per N steps.

Logged as ``train/device/samples_per_sec`` (images/s of this rank; ``train/samples_per_sec`` over all
ranks), ``train/device/items_per_sec`` (image tokens/s: CLS + kept patches per image, the tokens the image
tower actually runs on) and the running ``train/time``, ``train/batches``, ``train/samples``, ``train/lengths``.

Lightning's ``ThroughputMonitor`` calls ``torch.cuda.synchronize()`` after every training batch, which
drains the GPU's queue each step. This callback counts batches on the host and synchronises only at the
steps it logs (every ``every_n_steps``, default the trainer's ``log_every_n_steps``): the rates are exact
over each interval, the queue stays full in between. Validation time is left out.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput


def batch_images(batch: dict) -> int:
    """Number of images in a contract batch."""
    return int(batch["image"].shape[0])


class ImageTokens:
    """Image tokens the tower runs on for a batch: B x (1 + k), k = all m patches when ``keep`` is None."""

    def __init__(self, num_patches: int) -> None:
        self.num_patches = num_patches

    def __call__(self, batch: dict) -> int:
        keep = batch.get("keep")
        kept = self.num_patches if keep is None else keep.shape[1]
        return batch_images(batch) * (1 + kept)


class ImageThroughput(L.Callback):
    """Training images/s and image tokens/s over about ``window_size`` batches, synced every ``every_n_steps``."""

    def __init__(self, window_size: int = 20, every_n_steps: int | None = None) -> None:
        self.window_size = window_size
        self.every_n_steps = every_n_steps
        self.length_fn: ImageTokens | None = None
        self.throughput: Throughput | None = None
        self.val_start: float | None = None  # validation may run before training starts (the sanity check)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Learn the patch count from the model."""
        self.length_fn = ImageTokens(pl_module.data_spec().num_patches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock and size the window (in logged intervals) to cover ``window_size`` batches."""
        self.every = max(1, self.every_n_steps or trainer.log_every_n_steps)
        updates = max(2, math.ceil(self.window_size / self.every) + 1)
        self.throughput = Throughput(world_size=trainer.world_size, window_size=updates)
        self.batches = self.samples = self.lengths = 0
        self._sync(trainer)
        self.t0 = time.perf_counter()
        self.val_start: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Count the batch on the host (shapes only); at every N-th batch sync once, update and log."""
        self.batches += 1
        self.samples += batch_images(batch)
        self.lengths += self.length_fn(batch)
        if self.batches % self.every:
            return
        self._sync(trainer)
        self.throughput.update(time=time.perf_counter() - self.t0, batches=self.batches, samples=self.samples,
                               lengths=self.lengths)
        metrics = {f"train/{key}": value for key, value in self.throughput.compute().items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Validation inside fit does not count as training time."""
        if self.throughput is not None:
            self._sync(trainer)
            self.val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the clock's origin past the validation run."""
        if self.val_start is not None and self.throughput is not None:
            self.t0 += time.perf_counter() - self.val_start
            self.val_start = None

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
