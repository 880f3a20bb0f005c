"""``random``: the paper's token-level Random* (uniformly random k of m patches per image)."""

from __future__ import annotations

import torch

from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy, select_random


@STRATEGIES.register("random")
class RandomPatches(SelectionStrategy):
    """Random*: k patches drawn uniformly without replacement, per sample."""

    needs = "nothing"

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, num_patches = inputs.shape[:2]
        return select_random(batch, num_patches, k, generator, inputs.device).to(inputs.device)
