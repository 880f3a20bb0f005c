"""Full-patch tuning (paper Tab. 5f, FLIP's unmasked tuning): the last steps of a run train on all patches.

The phase is a pure function of ``global_step`` and the run's total steps, so a run resumed inside
it stays in it without any saved flag. At the boundary the DataModule switches to ``full`` after
transfer (whatever the selection mode: the workers' random/sidecar choice is discarded and the
on-the-fly governor is not run), and the learning rate is the schedule's value times
``lr_multiplier``.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lightning_juicer.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "trainer.callbacks[FullPatchPhase].init_args"


def phase_start(total_steps: int, steps: int | None, fraction: float | None) -> int:
    """First optimizer step of the phase: ``total - steps``, or ``total - round(fraction * total)``."""
    length = steps if steps is not None else round(fraction * total_steps)
    return max(0, total_steps - length)


def scaled_factor(factor, start: int, multiplier: float):
    """Wrap a LambdaLR factor so steps >= ``start`` get ``multiplier`` on top (a plain function: never pickled)."""

    def phase_factor(step: int) -> float:
        return factor(step) * (multiplier if step >= start else 1.0)

    return phase_factor


class FullPatchPhase(L.Callback):
    """Train the last ``steps`` (or ``fraction`` of all) optimizer steps on all patches at ``lr_multiplier`` x lr.

    Args:
        steps: length of the phase in optimizer steps.
        fraction: length of the phase as a fraction of the run's total steps (paper: 0.02 / 0.04 / 0.08);
            give exactly one of ``steps`` and ``fraction``.
        lr_multiplier: factor on the scheduled learning rate during the phase (composes with warm-up +
            cosine; needs a LambdaLR schedule, as JuicerCLIP's).
    """

    def __init__(self, steps: int | None = None, fraction: float | None = None, lr_multiplier: float = 1.0) -> None:
        super().__init__()
        if (steps is None) == (fraction is None):
            raise ConfigError(f"{KEY}: give exactly one of steps and fraction (got steps={steps}, fraction={fraction})")
        if steps is not None and steps < 1:
            raise ConfigError(f"{KEY}.steps: {steps} must be >= 1")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ConfigError(f"{KEY}.fraction: {fraction} is outside (0, 1]")
        if not lr_multiplier > 0.0:
            raise ConfigError(f"{KEY}.lr_multiplier: {lr_multiplier} must be > 0")
        self.steps, self.fraction, self.lr_multiplier = steps, fraction, lr_multiplier
        self.start_step: int | None = None
        self.total_steps: int | None = None
        self._announced = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The DataModule must be able to switch to full patches."""
        if stage == TrainerFn.FITTING and not hasattr(trainer.datamodule, "full_patches_from_step"):
            raise ConfigError(f"{KEY}: needs a JuicerDataModule (it switches the batches to all patches)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fix the boundary from the run's total steps; wrap the LR schedule; say so when resuming inside the phase.

        Runs after a checkpoint's step, optimizer and scheduler are restored (``on_fit_start`` runs before).
        """
        self.total_steps = int(trainer.estimated_stepping_batches)
        self.start_step = phase_start(self.total_steps, self.steps, self.fraction)
        trainer.datamodule.full_patches_from_step = self.start_step
        if self.lr_multiplier != 1.0:
            self._scale_schedules(trainer)
        rank_zero_info(
            f"full-patch phase: the last {self.total_steps - self.start_step} of {self.total_steps} steps "
            f"(from step {self.start_step}) on all patches, lr x {self.lr_multiplier:g}"
        )
        if trainer.global_step > self.start_step:
            rank_zero_info(f"full-patch phase: resumed at step {trainer.global_step}, inside the phase "
                           f"(it began at step {self.start_step})")

    def _scale_schedules(self, trainer: L.Trainer) -> None:
        """Multiply every per-step LambdaLR factor by ``lr_multiplier`` from ``start_step`` on."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not hasattr(scheduler, "lr_lambdas") or config.interval != "step":
                raise ConfigError(f"{KEY}.lr_multiplier: needs a per-step LambdaLR schedule, got "
                                  f"{type(scheduler).__name__} (interval {config.interval})")
            scheduler.lr_lambdas = [scaled_factor(f, self.start_step, self.lr_multiplier) for f in scheduler.lr_lambdas]
            # The current lr was computed before the wrap; recompute it (equal to a restored one after resume).
            step = scheduler.last_epoch
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(step)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        """Log the switch once, at the boundary step (console and loggers); log ``train/full_patch_phase`` (0/1)."""
        in_phase = trainer.global_step >= self.start_step
        if trainer.global_step == self.start_step and not self._announced:
            self._announced = True
            rank_zero_info(f"full-patch phase: switching to all patches at step {self.start_step}, "
                           f"lr x {self.lr_multiplier:g}")
            for logger in trainer.loggers:
                logger.log_metrics({"train/full_patch_phase_start": float(self.start_step)}, step=self.start_step)
        pl_module.log("train/full_patch_phase", float(in_phase), on_step=True, on_epoch=False, batch_size=1)
