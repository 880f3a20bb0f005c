"""``stratified``: one patch from each of k equal-size strata of the score ranking (paper Tab. 5b)."""

from __future__ import annotations

import torch

from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy, uniform_noise
from lightning_juicer.selection.topk import rank


def select_stratified(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One patch drawn uniformly from each of k equal-size score-rank strata [B, k], sorted."""
    batch, num_patches = scores.shape
    edges = torch.arange(k + 1, device=scores.device) * num_patches // k
    width = edges[1:] - edges[:-1]
    ranks = edges[:-1] + (uniform_noise((batch, k), generator, scores.device) * width).long().minimum(width - 1)
    return rank(scores).gather(1, ranks).sort(dim=1).values


@STRATEGIES.register("stratified")
class Stratified(SelectionStrategy):
    """The patches sorted by score and cut into k strata of (nearly) equal size; one drawn from each, so the kept
    set spans the whole score distribution while still following it."""

    needs = "scores"

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return select_stratified(inputs, k, generator)
