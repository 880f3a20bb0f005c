"""Full-patch tuning (paper Tab. 5f, FLIP's unmasked tuning): the last steps of a run train on all patches.

The phase belongs to the LightningModule's schedule: it is a pure function of ``global_step`` and the
run's total steps (fixed in ``configure_optimizers``), so a run resumed inside it stays in it without a
saved flag. From its first step the training step ignores the batch's ``keep`` and does not run the
governor, and the learning rate is the warm-up + cosine value times ``lr_multiplier`` (composed into
the LambdaLR factor, not edited into a live scheduler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning_juicer.errors import ConfigError

KEY = "model.init_args.full_patch"


def phase_start(total_steps: int, steps: int | None, fraction: float | None) -> int:
    """First optimizer step of the phase: ``total - steps``, or ``total - round(fraction * total)``."""
    length = steps if steps is not None else round(fraction * total_steps)
    return max(0, total_steps - length)


@dataclass(frozen=True)
class FullPatchPhase:
    """The last ``steps`` (or ``fraction`` of all) optimizer steps on all patches at ``lr_multiplier`` x lr.

    Configured as ``model.init_args.full_patch_steps`` / ``full_patch_fraction`` / ``full_patch_lr_multiplier``.
    """

    steps: int | None = None
    fraction: float | None = None
    lr_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.fraction is None):
            raise ConfigError(f"{KEY}_steps / {KEY}_fraction: give exactly one (got steps={self.steps}, "
                              f"fraction={self.fraction})")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{KEY}_steps: {self.steps} must be >= 1")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{KEY}_fraction: {self.fraction} is outside (0, 1]")
        if not self.lr_multiplier > 0.0:
            raise ConfigError(f"{KEY}_lr_multiplier: {self.lr_multiplier} must be > 0")

    @classmethod
    def from_args(cls, steps: int | None, fraction: float | None, lr_multiplier: float) -> FullPatchPhase | None:
        """The phase the model arguments ask for, or None (no phase) when neither steps nor fraction is set."""
        if steps is None and fraction is None:
            if lr_multiplier != 1.0:
                raise ConfigError(f"{KEY}_lr_multiplier: set {KEY}_steps or {KEY}_fraction too")
            return None
        return cls(steps, fraction, lr_multiplier)

    def start(self, total_steps: int) -> int:
        """First step of the phase in a run of ``total_steps`` optimizer steps."""
        return phase_start(total_steps, self.steps, self.fraction)

    def lr_factor(self, factor: Callable[[int], float], start: int) -> Callable[[int], float]:
        """``factor`` (a LambdaLR factor) times ``lr_multiplier`` from ``start`` on (a plain function: never pickled)."""
        multiplier = self.lr_multiplier

        def phase_factor(step: int) -> float:
            return factor(step) * (multiplier if step >= start else 1.0)

        return phase_factor
