"""Patch selection strategies: which of the m grid patches of each image the student sees.

All strategies return kept indices as a long tensor [B, k] in row-major grid order, sorted
ascending, with the same k for every sample of a batch (so no padding is ever needed), or
``None`` for ``full`` (the batch contract's "all patches").

Data-only strategies (``STRATEGIES``) need nothing but the grid: ``full`` and ``random`` (the
paper's token-level Random*). Score strategies (``SCORE_STRATEGIES``) use the governor's patch
scores: ``topk`` (the paper's default) keeps the k highest-scoring patches, ``stratified`` sorts
the patches by score, cuts the ranking into k strata of (nearly) equal size and draws one patch
uniformly from each, so the kept set spans the whole score distribution while still following it.

Feature strategies (``FEATURE_STRATEGIES``) use the governor's patch tokens: ``cluster`` (the paper's
token-level Cluster*) runs a small spherical k-means over each image's patches and keeps patches
evenly across the clusters (round-robin, random within a cluster), on the accelerator, per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STRATEGIES = ("full", "random")
SCORE_STRATEGIES = ("topk", "stratified")
FEATURE_STRATEGIES = ("cluster",)
GOVERNOR_STRATEGIES = SCORE_STRATEGIES + FEATURE_STRATEGIES
ALL_STRATEGIES = GOVERNOR_STRATEGIES + STRATEGIES


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """Number of patches kept at ratio r: k = round(r * m), at least 1."""
    return max(1, min(num_patches, round(keep_ratio * num_patches)))


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    return generator.device if generator is not None else device


def select_random(
    batch_size: int,
    num_patches: int,
    k: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniformly random k of m patches per sample (the paper's token-level Random*), sorted."""
    noise = torch.rand(batch_size, num_patches, generator=generator, device=_device(generator, device))
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
    if strategy in SCORE_STRATEGIES:
        raise ValueError(f"selection strategy {strategy!r} needs patch scores; use select_from_scores")
    raise ValueError(f"unknown selection strategy {strategy!r}; choose from {ALL_STRATEGIES}")


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """Patch indices [B, m] by descending score, ties broken towards the lower grid index."""
    return scores.argsort(dim=1, descending=True, stable=True)


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring patches [B, k] per sample (ties go to the lower grid index), sorted."""
    return _rank(scores)[:, :k].sort(dim=1).values


def select_stratified(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One patch drawn uniformly from each of k equal-size score-rank strata [B, k], sorted."""
    batch, num_patches = scores.shape
    edges = torch.arange(k + 1, device=scores.device) * num_patches // k
    width = edges[1:] - edges[:-1]
    noise = torch.rand(batch, k, generator=generator, device=_device(generator, scores.device))
    ranks = edges[:-1] + (noise.to(scores.device) * width).long().minimum(width - 1)
    return _rank(scores).gather(1, ranks).sort(dim=1).values


def select_from_scores(
    strategy: str,
    scores: torch.Tensor,
    keep_ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor | None, int]:
    """Kept indices [B, k] (or None for all) from scores [B, m], and how many samples fell back to random.

    A sample whose scores are not all finite is selected uniformly at random (and counted). For the
    score strategies the count is a 0-dim tensor on the scores' device (reading it is the caller's
    choice: the training step accumulates it on the device, see ``JuicerDataModule.settle_counts``).
    """
    batch, num_patches = scores.shape
    if strategy == "full" or keep_ratio >= 1.0:
        return None, 0
    k = keep_count(num_patches, keep_ratio)
    if strategy == "random":
        return select_random(batch, num_patches, k, generator, scores.device).to(scores.device), 0
    if strategy not in SCORE_STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose from {ALL_STRATEGIES}")
    bad = ~torch.isfinite(scores).all(dim=1)
    clean = scores.float().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    keep = select_topk(clean, k) if strategy == "topk" else select_stratified(clean, k, generator)
    # Random picks for every row, used where the scores were bad: no host sync on the count (training step).
    fallback = select_random(batch, num_patches, k, generator, keep.device).to(keep.device)
    return torch.where(bad[:, None], fallback, keep), bad.sum()


def patch_kmeans(features: torch.Tensor, num_clusters: int, iters: int = 10, generator=None) -> torch.Tensor:
    """Cluster labels [B, m] of each image's patch features [B, m, D]: batched spherical k-means.

    Centroids start at distinct random patches of the image; a cluster that empties keeps its centroid.
    """
    batch, m, _ = features.shape
    c = max(1, min(num_clusters, m))
    x = F.normalize(features.float(), dim=-1)
    noise = torch.rand(batch, m, generator=generator, device=_device(generator, x.device)).to(x.device)
    first = noise.topk(c, dim=1).indices
    centroids = x.gather(1, first[..., None].expand(-1, -1, x.shape[-1]))
    for _ in range(iters):
        labels = (x @ centroids.transpose(1, 2)).argmax(dim=2)
        onehot = F.one_hot(labels, c).to(x.dtype)
        sums = onehot.transpose(1, 2) @ x
        filled = onehot.sum(1)[..., None] > 0
        centroids = torch.where(filled, F.normalize(sums, dim=-1), centroids)
    return (x @ centroids.transpose(1, 2)).argmax(dim=2)


def select_cluster(labels: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k patches [B, k] spread evenly over each image's clusters: the i-th pick of every cluster before any (i+1)-th.

    Within a cluster the order is random, as is the order among clusters at the same round.
    """
    batch, m = labels.shape
    noise = torch.rand(batch, m, generator=generator, device=_device(generator, labels.device)).to(labels.device)
    order = (labels.double() + noise.double()).argsort(dim=1)
    sorted_labels = labels.gather(1, order)
    position = torch.arange(m, device=labels.device).expand(batch, m).contiguous()
    new_group = torch.ones_like(sorted_labels, dtype=torch.bool)
    new_group[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    starts = torch.where(new_group, position, 0).cummax(dim=1).values
    rank = torch.empty_like(position).scatter_(1, order, position - starts)
    second = torch.rand(batch, m, generator=generator, device=_device(generator, labels.device)).to(labels.device)
    return (rank.double() + second.double()).topk(k, dim=1, largest=False).indices.sort(dim=1).values


def resample_scores(scores: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Scores [B, gh*gw] on the governor's grid resampled onto the student's grid [B, dh*dw].

    Each axis that shrinks is area-pooled (``adaptive_avg_pool2d``: every destination cell
    averages the source cells it covers); each axis that grows is then bilinearly interpolated
    (``align_corners=False``, cell centres aligned). Equal grids are returned unchanged.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return scores
    x = scores.float().reshape(scores.shape[0], 1, *src_grid)
    pooled = (min(src_grid[0], dst_grid[0]), min(src_grid[1], dst_grid[1]))
    if pooled != src_grid:
        x = F.adaptive_avg_pool2d(x, pooled)
    if pooled != dst_grid:
        x = F.interpolate(x, size=dst_grid, mode="bilinear", align_corners=False)
    return x.flatten(1)
