"""``topk_context``: the governor's top patches plus a uniform share of the rest, so the image's context survives.

The governor's top-k keeps the object and drops the context (issue 12 point 2), while real captions
often name the context (the place, the scene behind the object). This strategy spends
``k_context = round(context * k)`` of the k-patch budget on patches drawn uniformly at random from
those *outside* the top ``k - k_context``, which it keeps as top-k would: same k per image (the
batch contract), ``context=0`` is ``topk`` and ``context=1`` is ``random``.
"""

from __future__ import annotations

import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy, uniform_noise
from lightning_juicer.selection.topk import rank


def select_topk_context(
    scores: torch.Tensor, k: int, context: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The top ``k - round(context * k)`` patches by score plus ``round(context * k)`` uniform others [B, k], sorted."""
    batch, num_patches = scores.shape
    k_context = min(k, round(context * k))
    order = rank(scores)
    top, rest = order[:, : k - k_context], order[:, k - k_context:]
    drawn = uniform_noise((batch, rest.shape[1]), generator, scores.device).topk(k_context, dim=1).indices
    return torch.cat([top, rest.gather(1, drawn)], dim=1).sort(dim=1).values


@STRATEGIES.register("topk_context")
class TopKContext(SelectionStrategy):
    """Top-k with a ``context`` share (0..1) of the budget drawn uniformly from the patches outside the top."""

    needs = "scores"

    def __init__(self, context: float = 0.25) -> None:
        self.context = float(context)

    def check(self, key: str) -> None:
        if not 0.0 <= self.context <= 1.0:
            raise ConfigError(f"{key}.init_args.context: {self.context} is outside [0, 1]")

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return select_topk_context(inputs, k, self.context, generator)
