"""Cluster: balanced sampling across the k-means clusters of the embeddings (equal share per cluster)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.sieves.base import SIEVES, Candidates, Kept, KMeansSieve, at_least
from lightning_juicer.sieves.clustered import cluster_sieve


@SIEVES.register("cluster")
@dataclass
class Cluster(KMeansSieve):
    """Spherical k-means, an equal quota per cluster (unused quota redistributed), random within a cluster.

    Args:
        nredo: k-means runs from different inits, the best kept
    """

    nredo: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "nredo")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        return cluster_sieve(candidates.arrays[self.embedding], n_keep, self.clusters, seed, self.niter, self.gpu,
                             self.nredo)
