"""Where the full-patch tuning phase went: it is part of the model's schedule now (``models/phase.py``).

An old config naming this callback gets a one-line error with the keys to use instead.
"""

from __future__ import annotations

import lightning as L

from lightning_juicer.errors import ConfigError


class FullPatchPhase(L.Callback):
    """Refuses to be configured: set ``model.init_args.full_patch_steps`` (or ``full_patch_fraction``) and
    ``full_patch_lr_multiplier`` instead."""

    def __init__(self, steps: int | None = None, fraction: float | None = None, lr_multiplier: float = 1.0) -> None:
        length = f"full_patch_steps {steps}" if steps is not None else f"full_patch_fraction {fraction}"
        raise ConfigError(
            f"trainer.callbacks[FullPatchPhase]: the full-patch phase is a model setting now; remove the callback and "
            f"set model.init_args.{length} and model.init_args.full_patch_lr_multiplier {lr_multiplier}"
        )
