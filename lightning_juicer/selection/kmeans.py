"""Batched spherical k-means over each image's patch features (Cluster*'s clusters), on the features' device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_juicer.selection.base import uniform_noise


def patch_kmeans(features: torch.Tensor, num_clusters: int, iters: int = 10, generator=None) -> torch.Tensor:
    """Cluster labels [B, m] of each image's patch features [B, m, D]: batched spherical k-means.

    Centroids start at distinct random patches of the image; a cluster that empties keeps its centroid.
    """
    batch, m, _ = features.shape
    c = max(1, min(num_clusters, m))
    x = F.normalize(features.float(), dim=-1)
    first = uniform_noise((batch, m), generator, x.device).topk(c, dim=1).indices
    centroids = x.gather(1, first[..., None].expand(-1, -1, x.shape[-1]))
    for _ in range(iters):
        labels = (x @ centroids.transpose(1, 2)).argmax(dim=2)
        onehot = F.one_hot(labels, c).to(x.dtype)
        sums = onehot.transpose(1, 2) @ x
        filled = onehot.sum(1)[..., None] > 0
        centroids = torch.where(filled, F.normalize(sums, dim=-1), centroids)
    return (x @ centroids.transpose(1, 2)).argmax(dim=2)
