"""CLIP score: keep the samples whose image and caption agree most under the reference model (DataComp)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_juicer.sieves.base import SIEVES, Candidates, Kept, Sieve
from lightning_juicer.sieves.scored import clip_score, top


@SIEVES.register("clip_score")
@dataclass
class ClipScore(Sieve):
    """Keep the highest image-text cosines of the reference model's embeddings."""

    needs = ("image", "text")

    def keep(self, candidates: Candidates, n_keep: int, seed: int) -> Kept:
        return Kept(top(clip_score(candidates.arrays["image"], candidates.arrays["text"]), n_keep), {})
