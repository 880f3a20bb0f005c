"""``cluster``: the paper's token-level Cluster*, patches kept evenly across k-means clusters of the patch tokens."""

from __future__ import annotations

import torch

from lightning_juicer.errors import ConfigError
from lightning_juicer.selection.base import STRATEGIES, SelectionStrategy, uniform_noise
from lightning_juicer.selection.kmeans import patch_kmeans


def select_cluster(labels: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k patches [B, k] spread evenly over each image's clusters: the i-th pick of every cluster before any (i+1)-th.

    Within a cluster the order is random, as is the order among clusters at the same round.
    """
    batch, m = labels.shape
    order = (labels.double() + uniform_noise((batch, m), generator, labels.device).double()).argsort(dim=1)
    sorted_labels = labels.gather(1, order)
    position = torch.arange(m, device=labels.device).expand(batch, m).contiguous()
    new_group = torch.ones_like(sorted_labels, dtype=torch.bool)
    new_group[:, 1:] = sorted_labels[:, 1:] != sorted_labels[:, :-1]
    starts = torch.where(new_group, position, 0).cummax(dim=1).values
    rank = torch.empty_like(position).scatter_(1, order, position - starts)
    second = uniform_noise((batch, m), generator, labels.device).double()
    return (rank.double() + second).topk(k, dim=1, largest=False).indices.sort(dim=1).values


@STRATEGIES.register("cluster")
class Cluster(SelectionStrategy):
    """Cluster*: a small spherical k-means over each image's patch tokens (``num_clusters`` clusters, ``iters``
    rounds), then patches kept round-robin across the clusters (random within one), per batch on the device."""

    needs = "features"

    def __init__(self, num_clusters: int = 4, iters: int = 10) -> None:
        self.num_clusters = num_clusters
        self.iters = iters

    def check(self, key: str) -> None:
        if self.num_clusters < 1:
            raise ConfigError(f"{key}.init_args.num_clusters: {self.num_clusters} must be >= 1")
        if self.iters < 0:
            raise ConfigError(f"{key}.init_args.iters: {self.iters} must be >= 0")

    def select(self, inputs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        labels = patch_kmeans(inputs, self.num_clusters, self.iters, generator)
        return select_cluster(labels, k, generator)
