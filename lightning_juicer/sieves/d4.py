"""D4 (Tirumala et al. 2023): SemDeDup, then drop the most prototypical samples of each re-clustered cluster."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.io.keeplist import check_fraction
from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, KMeansSieve, at_least
from lightning_juicer.sieves.clustered import d4


@SIEVES.register("d4")
@dataclass
class D4(KMeansSieve):
    """SemDeDup to ``dedup_fraction`` of the data, re-cluster, keep the least prototypical per cluster.

    Args:
        recluster: clusters of the second k-means (None: clusters)
        dedup_fraction: SemDeDup keeps this much before the prototypicality step
        block_elems: SemDeDup's similarity block size (rows x cluster size), bounds memory
    """

    recluster: int | None = None
    dedup_fraction: float = 0.75
    block_elems: int = 1 << 24

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "recluster", "block_elems")
        check_fraction(self.dedup_fraction, f"{KEY}.init_args.dedup_fraction")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        return d4(candidates.arrays[self.embedding], n_keep, self.clusters, seed, self.dedup_fraction, self.recluster,
                  self.niter, self.gpu, self.block_elems)
