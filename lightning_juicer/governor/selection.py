"""Patch selection strategies: which of the m grid patches of each image the student sees.

All strategies return kept indices as a long tensor [B, k] in row-major grid order, sorted
ascending, with the same k for every sample of a batch (so no padding is ever needed), or
``None`` for ``full`` (the batch contract's "all patches").
"""

from __future__ import annotations

import torch

STRATEGIES = ("full", "random")


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """Number of patches kept at ratio r: k = round(r * m), at least 1."""
    return max(1, min(num_patches, round(keep_ratio * num_patches)))


def select_random(
    batch_size: int, num_patches: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniformly random k of m patches per sample (the paper's token-level Random*), sorted."""
    noise = torch.rand(batch_size, num_patches, generator=generator)
    return noise.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


def select_patches(
    strategy: str,
    batch_size: int,
    num_patches: int,
    keep_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Kept patch indices [B, k] for a data-only strategy, or None when all patches are kept."""
    if strategy == "full" or keep_ratio >= 1.0:
        return None
    if strategy == "random":
        return select_random(batch_size, num_patches, keep_count(num_patches, keep_ratio), generator)
    raise ValueError(f"unknown selection strategy {strategy!r}; choose from {STRATEGIES}")
