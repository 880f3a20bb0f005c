"""``full``: every patch (the batch contract's ``keep = None``), whatever the keep ratio."""

from __future__ import annotations

import torch

from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy


@STRATEGIES.register("full")
class Full(SelectionStrategy):
    """All patches: the student sees whole images."""

    needs = "nothing"
    stochastic = False

    def keeps_all(self, keep_ratio: float) -> bool:
        return True

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, num_patches = inputs.shape[:2]
        return torch.arange(num_patches, device=inputs.device).expand(batch, num_patches)
