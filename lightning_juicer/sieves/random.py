"""Random: a uniform sample of the data (DataComp's baseline). Needs no embeddings: runs from the shard list."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.sieves.base import SIEVES, Candidates, Kept, Sieve
from lightning_juicer.sieves.scored import random_keep


@SIEVES.register("random")
@dataclass
class Random(Sieve):
    """Keep a seeded uniform random subset of the candidates."""

    needs = ()

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        return Kept(random_keep(len(candidates), n_keep, seed), {})
