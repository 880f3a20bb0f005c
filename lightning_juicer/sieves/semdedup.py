"""SemDeDup (Abbas et al. 2023): remove semantic near-duplicates within each k-means cluster."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.errors import ConfigError
from lightning_juicer.sieves.base import KEY, SIEVES, Candidates, Kept, KMeansSieve, at_least
from lightning_juicer.sieves.clustered import semdedup


@SIEVES.register("semdedup")
@dataclass
class SemDeDup(KMeansSieve):
    """Remove M_j > 1 - eps (M_j: max cosine to an earlier member of its cluster), or the highest M_j to the fraction.

    Args:
        eps: None: the quantile that meets the fraction
        block_elems: similarity block size (rows x cluster size), bounds memory
    """

    eps: float | None = None
    block_elems: int = 1 << 24

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "block_elems")
        if self.eps is not None and not 0.0 <= self.eps < 2.0:
            raise ConfigError(f"{KEY}.init_args.eps: {self.eps} is outside [0, 2)")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        return semdedup(candidates.arrays[self.embedding], n_keep, self.clusters, seed, self.eps, self.niter,
                        self.gpu, self.block_elems)
