"""``topk``: the paper's default, the k patches the governor scores highest (Eq. 2)."""

from __future__ import annotations

import torch

from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Patch indices [B, m] by descending score, ties broken towards the lower grid index."""
    return scores.argsort(dim=1, descending=True, stable=True)


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring patches [B, k] per sample (ties go to the lower grid index), sorted."""
    return rank(scores)[:, :k].sort(dim=1).values


@STRATEGIES.register("topk")
class TopK(SelectionStrategy):
    """The k highest-scoring patches of each image."""

    needs = "scores"
    stochastic = False

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return select_topk(inputs, k)
